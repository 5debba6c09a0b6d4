/* SPDX-License-Identifier: MIT */
/* The Vm object: its ops (API calls waiting for a state), the restart policy, the preparation, the executor of the
 * state table, and the operations the API calls. QEMU itself is in vm_qemu.c, the records in vm_records.c. */
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "log.h"
#include "store.h"
#include "vm-internal.h"
#include "worker.h"


typedef enum VmOpKind {
        VM_OP_REGISTER,        /* completed by the registration itself (VmRegister) */
        VM_OP_START,
        VM_OP_STOP,
        VM_OP_DESTROY,
} VmOpKind;

/* A registration in flight: the spec waits for its password's hash (yescrypt: ~60 ms of CPU, on a worker thread),
 * then for spec.pb to be durable (the disk queue), and only then replaces the VM's spec. */
struct VmRegister {
        Vm *vm;
        VmSpec spec;             /* the new spec, without its cleartext password */
        char *password;          /* cleartext, until hashed; wiped */
        char *old_hash;          /* the stored hash: kept when the password is the same one */
        char *hash;              /* the worker's result */
        HydraError err;          /* the worker's */
        bool apply_on_next_start;
        bool cancelled;          /* the VM was destroyed meanwhile */
        Worker *worker;
        VmOp *op;                /* NULL once the client went away */
};

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

uint64_t vm_now_usec(clockid_t clock) {
        struct timespec ts;
        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
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
        if (op->vm->reg && op->vm->reg->op == op)
                op->vm->reg->op = NULL;
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
        const char *detail;
        HydraError err;
        bool ready;

        ready = vm_services_ready(op->vm->services, NULL, &detail);
        hydra_error_set(&err, -ETIMEDOUT, "VM '%s' did not become %s within %llu s (it is %s%s%s%s; the start goes on)",
                        op->vm->name, op->wait_ready ? "ready" : "running",
                        (unsigned long long) (op->timeout_usec / 1000000ULL), vm_state_to_string(op->vm->state),
                        op->vm->state == VM_STATE_RUNNING && !ready ? ", not ready" : "", detail ? ": " : "",
                        strempty(detail));
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
                r = sd_event_add_time_relative(vm->ctx.event, &op->timer, CLOCK_MONOTONIC,
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

bool vm_is_down(const Vm *vm) {
        return !vm_state_has_process(vm->state) && vm->state != VM_STATE_PREPARING;
}

/* Nothing queued for the cache (no VmContext.cache_queue: the VM's own disk queue carries the removals). */
static bool vm_cache_quiet(const Vm *vm) {
        return !vm->ctx.cache_queue || disk_queue_idle(vm->ctx.cache_queue);
}

/* Completes the ops whose wait is over. Callbacks may start new ops, so restart from the head each time. */
void vm_check_ops(Vm *vm) {
        bool again = true;

        /* A client hears of a state once its record is durable (on_disk_idle calls again). */
        if (!disk_queue_idle(vm->disk))
                return;

        while (again) {
                again = false;
                for (VmOp *op = vm->ops; op; op = op->next) {
                        HydraError err;

                        hydra_error_clear(&err);
                        if (op->kind == VM_OP_REGISTER)
                                continue;
                        if (op->kind == VM_OP_START) {
                                if (vm->state == VM_STATE_RUNNING &&
                            (!op->wait_ready || vm_services_ready(vm->services, NULL, NULL))) {
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
                                if (vm->registered || !vm_cache_quiet(vm))
                                        continue; /* done once the cached downloads it removes are gone too */
                                op_complete(op, 0, NULL);
                        }
                        again = true;
                        break;
                }
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
        vm_emit(vm, &ev);
}

static void vm_restart_cancel(Vm *vm) {
        vm->restart_timer = sd_event_source_disable_unref(vm->restart_timer);
        vm->next_restart_usec = 0;
}

static int on_restart_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;
        int r;

        vm_restart_cancel(vm);
        if (!vm->registered || !vm_is_down(vm))
                return 0;
        if (vm->reg || vm->pid > 0) {
                /* A new spec is being stored, or the QEMU of the failed start is still being stopped (a
                 * ready-timeout kills it after the state changed): the restart follows. */
                r = sd_event_add_time_relative(vm->ctx.event, &vm->restart_timer, CLOCK_MONOTONIC, 1000000ULL, 0,
                                               on_restart_timer, vm);
                if (r >= 0) {
                        (void) sd_event_source_set_description(vm->restart_timer, "vm-restart");
                        vm->next_restart_usec = vm_now_usec(CLOCK_REALTIME) + 1000000ULL;
                        return 0;
                }
                if (vm->pid > 0) {
                        log_vm_error_errno(vm->name, r, "VM '%s': cannot schedule the restart: %m", vm->name);
                        return 0;
                }
        }
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
static void vm_consider_restart(Vm *vm, VmState from, VmState to, VmEvent event) {
        const typeof(vm->spec.supervision) *sv = &vm->spec.supervision;
        uint64_t delay, now = vm_now_usec(CLOCK_MONOTONIC);
        RestartVerdict verdict;
        bool failure;
        int r;

        if (!vm->registered || vm->destroy_pending)
                return;
        if (to == VM_STATE_CRASHED)
                failure = true;
        else if (to == VM_STATE_FAILED && (vm->restarting || event == VM_EVENT_READY_TIMEOUT))
                failure = true; /* a guest that never became ready died as surely as one that crashed */
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
        r = sd_event_add_time_relative(vm->ctx.event, &vm->restart_timer, CLOCK_MONOTONIC, delay, 0,
                                       on_restart_timer, vm);
        if (r < 0) {
                log_vm_error_errno(vm->name, r, "VM '%s': cannot schedule the restart: %m", vm->name);
                return;
        }
        (void) sd_event_source_set_description(vm->restart_timer, "vm-restart");
        vm->next_restart_usec = vm_now_usec(CLOCK_REALTIME) + delay;
        vm_notice(vm, "restarting in %llu s (policy %s, %s)", (unsigned long long) (delay / 1000000ULL),
                  restart_policy_to_string(sv->restart),
                  event == VM_EVENT_READY_TIMEOUT ? "ready-timeout"
                  : failure                       ? vm->last_exit.reason
                                                  : "the guest shut down");
}

/* Enters a state: the records and services the table in vm_state.c names for it, the event, then what follows
 * (ops that were waiting, a pending destroy, the restart policy). Only vm_dispatch() calls it. */
static void vm_set_state(Vm *vm, VmState next, VmEvent event, const char *reason, bool announce) {
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
        /* `journalctl -p warning` shows what went wrong: a failed start is an error, a crash a warning. */
        log_vm_state(next == VM_STATE_FAILED    ? LOG_ERR
                     : next == VM_STATE_CRASHED ? LOG_WARNING
                                                : LOG_INFO,
                     vm->name, vm_state_to_string(next), "VM '%s': %s -> %s (%s)", vm->name, vm_state_to_string(from),
                     vm_state_to_string(next), reason);
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
        vm_emit(vm, &ev);

        if (next == VM_STATE_RUNNING)
                vm->restarting = false;
        /* The readiness deadline runs while the guest boots, no longer: not once it stops or failed. */
        if (next != VM_STATE_STARTING && next != VM_STATE_RUNNING)
                vm_ready_timer_disarm(vm);
        if (vm_state_has_services(next) && !vm_state_has_services(from))
                vm_services_up(vm->services);
        else if (!vm_state_has_services(next) && vm_state_has_services(from))
                vm_services_down(vm->services);
        if (vm->destroy_pending && vm_is_down(vm))
                (void) vm_dispatch(vm, VM_EVENT_DESTROY, "destroyed");
        else
                vm_consider_restart(vm, from, next, event);
        vm_check_ops(vm);
}

/* --- the download cache: what a replaced or destroyed spec named goes, unless another VM uses it --- */

static bool spec_names_url(const VmSpec *spec, const char *url) {
        return (spec->image.url && streq(spec->image.url, url)) ||
               (spec->bare.artifact.url && streq(spec->bare.artifact.url, url));
}

bool vm_uses_url(const Vm *vm, const char *url) {
        if (isempty(url))
                return false;
        if (vm->registered && spec_names_url(&vm->spec, url))
                return true;
        if (vm->provision || vm->prepare_pending)
                for (char **u = vm->stale_urls; u && *u; u++)
                        if (streq(*u, url))
                                return true;
        return false;
}

static int stale_add(Vm *vm, const char *url) {
        return strv_contains(vm->stale_urls, url) ? 0 : strv_push_copy(&vm->stale_urls, url);
}

static void on_cache_dropped(int r, const HydraError *err, void *userdata) {
        CacheDrop *d = userdata;
        Vm *vm = d->userdata;
        const char *key = strrchr(d->entry, '/') + 1;
        char size[32];

        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': %s; ignoring it", vm->name, err->message);
        else if (d->backs_disk && vm->registered && stale_add(vm, d->url) >= 0)
                /* The disk made from the old spec is still an overlay on it: tried again once a preparation made
                 * another (it stays while reuse_disk_on_change keeps the disk). */
                log_vm_debug(vm->name, "VM '%s': keeping cached download %s while its disk is an overlay on it",
                             vm->name, key);
        else if (d->backs_disk)
                log_vm_info(vm->name, "VM '%s': keeping cached download %s: a VM's disk is an overlay on it (the "
                            "sweep at hydrad's start removes it once no disk is)", vm->name, key);
        else if (d->found)
                log_vm_info(vm->name, "VM '%s': removed cached download %s (%s): no registered VM uses it",
                            vm->name, key, cache_format_size(d->size, size));
}

/* Removes url's download from the cache, unless another VM uses it; off the loop (the cache queue), after a
 * cancelled download of it has let go. A disk that is an overlay on it keeps it, except the VM's own once it is
 * being destroyed (its disk goes too). */
static void drop_cached(Vm *vm, const char *url) {
        CacheDrop *d;
        int r;

        if (isempty(url) || (vm->ctx.url_in_use && vm->ctx.url_in_use(vm, url, vm->ctx.userdata)))
                return;
        r = cache_drop_new(vm->ctx.cache_dir, url, vm->ctx.config->state_dir, vm->registered ? -1 : (int) vm->role,
                           vm->ctx.fetcher, &d);
        if (r >= 0) {
                d->userdata = vm;
                r = disk_queue_call(vm->ctx.cache_queue ?: vm->disk, cache_drop_run, d, cache_drop_free,
                                    on_cache_dropped, d);
        }
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot remove a cached download, ignoring: %m",
                                     vm->name);
}

/* The downloads of replaced specs go once no preparation of the old spec is in flight (it writes into them). */
static void vm_drop_stale(Vm *vm) {
        _cleanup_strv_free_ char **urls = NULL;

        if (!vm->stale_urls || vm->provision || vm->prepare_pending)
                return;
        urls = TAKE_PTR(vm->stale_urls);
        for (char **u = urls; *u; u++)
                if (!vm->registered || !spec_names_url(&vm->spec, *u)) /* not named again since */
                        drop_cached(vm, *u);
}

/* Remembers the URLs of the spec being replaced that the new one does not name. Returns 0 or -ENOMEM. */
static int note_stale(Vm *vm, const VmSpec *new) {
        const char *old[] = { vm->spec.image.url, vm->spec.bare.artifact.url };
        int r;

        if (!vm->registered)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(old); i++) {
                if (isempty(old[i]) || spec_names_url(new, old[i]))
                        continue;
                r = stale_add(vm, old[i]);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* --- preparation and launch --- */

static ProvisionContext vm_provision_context(Vm *vm) {
        return (ProvisionContext) {
                .event = vm->ctx.event,
                .fetcher = vm->ctx.fetcher,
                .name = vm->name,
                .state_dir = vm->state_dir,
                .cache_dir = vm->ctx.cache_dir,
        };
}

int vm_plan(Vm *vm, char ***ret_argv, CloudInitFiles *ret_files, char **ret_qemu_user, char ***ret_root_reasons,
            HydraError *err) {
        _cleanup_(provision_output_done) ProvisionOutput out = {};
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        ProvisionContext ctx = vm_provision_context(vm);
        _cleanup_strv_free_ char **reasons = NULL, **argv = NULL;
        _cleanup_free_ char *user = NULL;
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        r = provision_plan(&ctx, &vm->spec, &out, &files, err);
        if (r < 0)
                return r;
        r = vm_build_argv(vm, &out, &argv, err);
        if (r < 0)
                return r;
        r = vm_qemu_user_decide(vm, &out, &reasons);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        if (r > 0)
                user = strdup(vm->ctx.config->qemu_user);
        else if (geteuid() == 0)
                user = strdup("root");
        else if (asprintf(&user, "uid %u", (unsigned) geteuid()) < 0)
                user = NULL;
        if (!user)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        *ret_argv = TAKE_PTR(argv);
        *ret_files = files;
        files = (CloudInitFiles) {};
        *ret_qemu_user = TAKE_PTR(user);
        *ret_root_reasons = TAKE_PTR(reasons);
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
        vm_emit(vm, &ev);
}

static void on_provision_notice(const char *message, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_NOTICE, .notice = message };

        vm_emit(vm, &ev);
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

        r = mkdir_private(vm->state_dir, (gid_t) -1);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", vm->state_dir, strerror(-r));
        r = mkdir_private(vm->run_dir, vm->ctx.config->socket_gid);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", vm->run_dir, strerror(-r));
        r = mkdir_p(ctx.cache_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", ctx.cache_dir, strerror(-r));

        vm_progress_clear(vm);
        /* The provision begins once the "preparing" record is durable (vm_prepare_continue): a hydrad that dies
         * during the download is then followed by one that knows. */
        vm->prepare_pending = true;
        return 0;
}

static void vm_prepare_continue(Vm *vm) {
        ProvisionContext ctx = vm_provision_context(vm);
        HydraError err;
        int r;

        if (!vm->prepare_pending || vm->state != VM_STATE_PREPARING)
                return;
        /* After the "preparing" record, and after the removals from the cache queued before (vm_cache_idle()
         * calls again): a download never goes into an entry that is being removed. */
        if (!disk_queue_idle(vm->disk) || !vm_cache_quiet(vm))
                return;
        vm->prepare_pending = false;
        hydra_error_clear(&err);
        r = provision_start(&ctx, &vm->spec, &provision_callbacks, vm, &vm->provision, &err);
        if (r < 0) {
                vm->last_error = err;
                log_vm_error(vm->name, "VM '%s': preparation failed: %s", vm->name, err.message);
                (void) vm_dispatch(vm, VM_EVENT_PREPARE_FAILED, "prepare-failed");
        }
}

/* The staged stop from stage on (a later stage than one already reached escalates), once the record of the state
 * that asked for it is durable: a hydrad killed after the guest was told to power off is followed by one that
 * knows the stop was under way, and finishes it instead of taking the exit for a crash. */
static void vm_stop_continue(Vm *vm) {
        StopStage stage = vm->stop_pending;

        vm->stop_pending = STOP_STAGE_NONE;
        if (stage == STOP_STAGE_NONE || vm->pid <= 0 || vm->stop_stage >= stage)
                return;
        vm_stop_advance(vm, stage);
}

static void vm_stop_when_recorded(Vm *vm, StopStage stage) {
        if (stage > vm->stop_pending)
                vm->stop_pending = stage;
        if (disk_queue_idle(vm->disk))
                vm_stop_continue(vm);
}

/* Everything queued on vm->disk is durable: the steps that waited for it go on. */
static void on_disk_idle(DiskQueue *q, void *userdata) {
        Vm *vm = userdata;

        vm_prepare_continue(vm);
        vm_stop_continue(vm);
        vm_check_ops(vm);
}

void vm_cache_idle(Vm *vm) {
        vm_prepare_continue(vm);
        vm_check_ops(vm);
}

static int vm_remove(Vm *vm);

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
                if (disk_queue_idle(vm->disk)) /* nothing was queued (out of memory): no idle callback comes */
                        vm_prepare_continue(vm);
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
                vm_stop_when_recorded(vm, STOP_STAGE_POWERDOWN);
                return 0;
        case VM_ACTION_KILL:
                vm_stop_when_recorded(vm, STOP_STAGE_QUIT);
                return 0;
        case VM_ACTION_CANCEL:
                /* The download, unpack or helper in flight stops and its partial files go. */
                vm->prepare_pending = false;
                provision_cancel(vm->provision);
                vm->provision = NULL;
                vm_progress_clear(vm);
                return 0;
        case VM_ACTION_REAP:
                /* After the resting state's record (queued by the state change): a crash in between leaves both,
                 * and the next hydrad finds the process gone. */
                vm_teardown_process(vm);
                vm_runtime_remove(vm);
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
                vm_set_state(vm, t.next, event, reason ? reason : vm_event_to_string(event), true);
                return r;
        }
        vm_set_state(vm, t.next, event, reason ? reason : vm_event_to_string(event), false);
        r = vm_act(vm, t.action);
        /* A preparation of a replaced spec may have ended (prepared, failed, cancelled): its downloads go. */
        vm_drop_stale(vm);
        return r;
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

static VmRegister *register_free(VmRegister *reg) {
        if (!reg)
                return NULL;
        worker_cancel(reg->worker); /* joins the thread: only at exit, or when the loop already knows it is done */
        vm_spec_done(&reg->spec);
        if (reg->password) {
                explicit_bzero(reg->password, strlen(reg->password));
                free(reg->password);
        }
        free(reg->old_hash);
        free(reg->hash);
        free(reg);
        return NULL;
}

/* r: 1 changed, 0 unchanged, or a negative errno with err. */
static void register_finish(Vm *vm, int r, const HydraError *err) {
        VmOp *op = vm->reg->op;
        HydraError e;

        /* err may point into the registration (the worker's error): copied before it goes. */
        hydra_error_clear(&e);
        if (err)
                e = *err;
        vm->reg = register_free(vm->reg);
        if (op)
                op_complete(op, r, err ? &e : NULL);
}

static void register_cancelled(Vm *vm) {
        HydraError err;

        hydra_error_set(&err, -ECANCELED, "the registration of VM '%s' was cancelled by a destroy", vm->name);
        register_finish(vm, err.code, &err);
}

static void on_spec_stored(int r, const HydraError *err, void *userdata) {
        Vm *vm = userdata;
        VmRegister *reg = vm->reg;

        if (reg->cancelled)
                return register_cancelled(vm);
        if (r < 0)
                return register_finish(vm, r, err);

        /* The old spec's downloads the new one does not name go once the new spec is durable (now), or once a
         * preparation of the old one has ended. Without memory for the list, the sweep at start-up finds them. */
        if (note_stale(vm, &reg->spec) < 0)
                log_vm_warning(vm->name, "VM '%s': out of memory; its replaced spec's downloads stay in the cache",
                               vm->name);
        vm_spec_done(&vm->spec);
        vm->spec = reg->spec;
        reg->spec = (VmSpec) {};
        vm->generation++;
        log_vm_info(vm->name, "VM '%s': spec registered (generation %llu)", vm->name,
                    (unsigned long long) vm->generation);
        vm_services_spec_changed(vm->services);
        if (!vm->registered) {
                vm->registered = true;
                vm->state = VM_STATE_DEFINED; /* where a VM that was never registered, or was destroyed, rests */
                HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_STATE, .from = VM_STATE_DEFINED,
                                  .to = VM_STATE_DEFINED, .reason = "registered" };
                vm_emit(vm, &ev);
                /* A QEMU left running under a stored spec that could not be read: registering again takes it
                 * back instead of leaving it unknown. */
                if (vm->pid <= 0)
                        (void) vm_adopt(vm);
        }
        vm_drop_stale(vm);
        register_finish(vm, 1, NULL);
}

/* The spec is complete (validated by vm_register(), hashed by us): unchanged, refused, or queued for the disk.
 * Returns 1 when finished (unchanged), 0 when the store is pending, or a negative errno with err. */
static int register_store(Vm *vm, HydraError *err) {
        VmRegister *reg = vm->reg;
        int r;

        if (vm->registered && vm_spec_equal(&vm->spec, &reg->spec))
                return 1;
        if (vm->registered && !vm_is_down(vm) && !reg->apply_on_next_start)
                return hydra_error_set(err, -EBUSY,
                                       "VM '%s' is %s: stop it first, or register with apply_on_next_start to use "
                                       "the new spec at its next start",
                                       vm->name, vm_state_to_string(vm->state));
        r = vm_spec_store(vm, &reg->spec, on_spec_stored, vm, err);
        return r < 0 ? r : 0;
}

static int register_hash_run(Worker *w, void *userdata) {
        VmRegister *reg = userdata;
        VmSpec s = {};
        int r;

        if (reg->old_hash && vm_spec_password_matches(reg->password, reg->old_hash)) {
                reg->hash = strdup(reg->old_hash);
                return reg->hash ? 0 : hydra_error_set(&reg->err, -ENOMEM, "guest.password: out of memory");
        }
        s.guest.password = TAKE_PTR(reg->password);
        r = vm_spec_hash_password(&s, &reg->err);
        reg->password = TAKE_PTR(s.guest.password); /* NULL once hashed (wiped); else wiped by register_free() */
        reg->hash = TAKE_PTR(s.guest.password_hash);
        return r;
}

static void register_hash_done(Worker *w, int r, void *userdata) {
        VmRegister *reg = userdata;
        Vm *vm = reg->vm;
        HydraError err;

        reg->worker = NULL;
        if (reg->cancelled)
                return register_cancelled(vm);
        if (r < 0)
                return register_finish(vm, r, &reg->err);
        free(reg->spec.guest.password_hash);
        reg->spec.guest.password_hash = TAKE_PTR(reg->hash);
        hydra_error_clear(&err);
        r = register_store(vm, &err);
        if (r != 0)
                register_finish(vm, r < 0 ? r : 0, &err);
}

int vm_register(Vm *vm, VmSpec *spec, bool apply_on_next_start, vm_op_done_t done, void *userdata, VmOp **ret_op,
                HydraError *err) {
        const VmSpec *old = vm->registered ? &vm->spec : &(VmSpec) {};
        VmRegister *reg;
        int r;

        if (vm->reg)
                return hydra_error_set(err, -EBUSY, "VM '%s' is being registered by another RegisterVm; register "
                                       "again once it has answered", vm->name);
        if (keep_secret(&spec->image.password, old->image.password) < 0 ||
            keep_secret(&spec->image.token, old->image.token) < 0 ||
            keep_secret(&spec->bare.artifact.password, old->bare.artifact.password) < 0 ||
            keep_secret(&spec->bare.artifact.token, old->bare.artifact.token) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (spec->guest.password && streq(spec->guest.password, "(set)"))
                spec->guest.password = mfree(spec->guest.password);

        reg = calloc(1, sizeof(*reg));
        if (!reg)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        *reg = (VmRegister) { .vm = vm, .spec = *spec, .apply_on_next_start = apply_on_next_start };
        *spec = (VmSpec) {};
        vm->reg = reg;

        /* A cleartext password from a client other than hydractl: hashed before anything else sees it, keeping
         * the stored hash when it is the same password (a new salt would change the guest configuration and
         * reset the disk on every register). */
        if (reg->spec.guest.password) {
                reg->password = TAKE_PTR(reg->spec.guest.password);
                if (old->guest.password_hash && !reg->spec.guest.password_hash &&
                    !(reg->old_hash = strdup(old->guest.password_hash))) {
                        vm->reg = register_free(reg);
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                }
                reg->spec.guest.password_hash = mfree(reg->spec.guest.password_hash);
        }

        /* Checked before anything else, without its cleartext password: a refusal costs no hashing. */
        r = vm_spec_apply_defaults(&reg->spec);
        if (r < 0)
                hydra_error_set(err, r, "out of memory");
        else
                r = vm_spec_validate(&reg->spec, err);
        if (r >= 0)
                r = vm_spec_validate_role(&reg->spec, vm->role, err);
        if (r >= 0 && vm->ctx.check_spec)
                r = vm->ctx.check_spec(vm, &reg->spec, err, vm->ctx.userdata);
        if (r < 0) {
                vm->reg = register_free(reg);
                return r;
        }

        if (reg->password) {
                r = worker_start(vm->ctx.event, "yescrypt", register_hash_run, NULL, register_hash_done, reg,
                                 &reg->worker);
                if (r < 0) {
                        vm->reg = register_free(reg);
                        return hydra_error_set(err, r, "cannot start the password hashing: %s", strerror(-r));
                }
        } else {
                r = register_store(vm, err);
                if (r != 0) {
                        vm->reg = register_free(reg);
                        return r;
                }
        }

        r = op_new(vm, VM_OP_REGISTER, 0, done, userdata, ret_op);
        if (r < 0) {
                /* The registration goes on; nobody hears of it. */
                *ret_op = NULL;
                return hydra_error_set(err, r, "out of memory");
        }
        reg->op = *ret_op;
        return 0;
}

int vm_load(Vm *vm, HydraError *err) {
        VmSpec spec = {};
        int r;

        r = vm_spec_read(vm, &spec, err);
        if (r <= 0)
                return r;
        /* Restoring the records, not a transition: the VM is as the previous hydrad left it. */
        vm->spec = spec;
        vm->generation = 1;
        vm->registered = true;
        vm->state = VM_STATE_DEFINED;
        vm_state_load(vm);
        vm_services_spec_changed(vm->services);
        return 1;
}


int vm_start(Vm *vm, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata, VmOp **ret_op,
             HydraError *err) {
        int r;

        if (!vm->registered)
                return hydra_error_set(err, HYDRA_ENOTREGISTERED, "VM '%s' is not registered", vm->name);
        if (wait_ready && vm->spec.supervision.probe == PROBE_NONE)
                return hydra_error_set(err, -EINVAL, "VM '%s' has no readiness probe (supervision.probe is none): "
                                       "it never becomes ready; wait for running instead", vm->name);
        if (vm->state == VM_STATE_RUNNING && (!wait_ready || vm_services_ready(vm->services, NULL, NULL)))
                return 1;
        if (vm->pid > 0 && !vm_state_has_process(vm->state))
                return hydra_error_set(err, -EBUSY, "the previous QEMU of VM '%s' (pid %d) is still exiting",
                                       vm->name, (int) vm->pid);
        if (vm->reg)
                return hydra_error_set(err, -EBUSY, "VM '%s' is being registered; start it once RegisterVm has "
                                       "answered", vm->name);

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

        if (vm->state == VM_STATE_RUNNING && (!wait_ready || vm_services_ready(vm->services, NULL, NULL)))
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
                                                : vm->ctx.config->stop_timeout_usec;
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

static void on_removed(int r, const HydraError *err, void *userdata) {
        Vm *vm = userdata;

        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': %s; ignoring it", vm->name, err->message);
}

/* The REMOVE action: forgets the VM: stored spec, disk-side state, runtime files, and unless asked to keep them,
 * the downloads no other VM uses. */
static int vm_remove(Vm *vm) {
        int r;

        vm->destroy_pending = false;
        if (vm->reg)
                vm->reg->cancelled = true; /* its spec.pb, if queued, goes with the directory below */
        /* A preparation in flight stops before anything it writes into is removed (the CANCEL action that
         * follows a destroy's stop comes after this). */
        vm->prepare_pending = false;
        provision_cancel(vm->provision);
        vm->provision = NULL;
        vm_progress_clear(vm);
        vm->registered = false; /* from here on: its own disk, going too, keeps no download */
        if (!vm->destroy_keep_cache) {
                char **stale = TAKE_PTR(vm->stale_urls);

                drop_cached(vm, vm->spec.image.url);
                drop_cached(vm, vm->spec.bare.artifact.url);
                for (char **u = stale; u && *u; u++)
                        drop_cached(vm, *u);
                strv_free(stale);
        }
        vm->stale_urls = strv_free(vm->stale_urls);
        provision_output_done(&vm->prepared);
        vm_services_close(vm->services);
        /* Off the loop (a disk image is gigabytes); the destroy op completes once they are gone. */
        r = disk_queue_rm_rf(vm->disk, vm->state_dir, on_removed, vm);
        if (r >= 0)
                r = disk_queue_rm_rf(vm->disk, vm->run_dir, on_removed, vm);
        if (r < 0)
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot remove its directories, ignoring: %m", vm->name);

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
                if (disk_queue_idle(vm->disk) && vm_cache_quiet(vm))
                        return 1;
                /* Done once its files are gone (the disk queue removes them). */
                r = op_new(vm, VM_OP_DESTROY, 0, done, userdata, ret_op);
                if (r < 0)
                        return hydra_error_set(err, r, "out of memory");
                return 0;
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

/* --- services --- */

static void on_services_ready_changed(VmServices *vs, bool ready, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_READY };

        if (ready)
                vm_ready_timer_disarm(vm);
        vm_runtime_update(vm);
        vm_emit(vm, &ev);
        vm_check_ops(vm);
}

static void on_services_console_data(VmServices *vs, const void *data, size_t size, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_CONSOLE, .data = data, .size = size };

        vm_emit(vm, &ev);
}

static const VmServicesCallbacks services_callbacks = {
        .ready_changed = on_services_ready_changed,
        .console_data = on_services_console_data,
};

/* --- object --- */

int vm_new(const VmContext *ctx, Role role, Vm **ret) {
        const HydraConfig *cfg = ctx->config;
        VmServicesConfig sc;
        Vm *vm;
        int r;

        vm = calloc(1, sizeof(*vm));
        if (!vm)
                return -ENOMEM;
        vm->ctx = *ctx;
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
        sc = (VmServicesConfig) {
                .event = ctx->event,
                .name = vm->name,
                .cri = role == ROLE_ISOLATED,
                .spec = &vm->spec,
                .console_log_path = vm->console_path,
                .console_sock_path = vm->console_sock_path,
                .run_dir = vm->run_dir,
                .cri_path = vm->cri_path,
                .socket_gid = cfg->socket_gid, /* resolved once, at start-up (config_finish) */
        };
        r = vm_services_new(&sc, &services_callbacks, vm, &vm->services);
        if (r >= 0)
                r = disk_queue_new(ctx->event, vm->role == ROLE_HOST ? "disk-host" : "disk-isolated", on_disk_idle,
                                   vm, &vm->disk);
        if (r < 0) {
                vm_free(vm);
                return r;
        }
        *ret = vm;
        return 0;
}

Vm *vm_free(Vm *vm) {
        if (!vm)
                return NULL;
        /* What is queued is written first: no record is lost at exit. */
        vm->disk = disk_queue_free(vm->disk);
        while (vm->ops)
                op_free(vm->ops);
        vm->reg = register_free(vm->reg);
        provision_cancel(vm->provision);
        vm_progress_clear(vm);
        provision_output_done(&vm->prepared);
        vm_drives_clear(vm);
        /* Drop our handles only: the QEMU process keeps running (on-exit = leave). */
        vm->qmp = qmp_client_free(vm->qmp);
        vm->machine_job = machine_job_free(vm->machine_job);
        free(vm->machine_name);
        free(vm->machine_scope);
        vm->child_source = sd_event_source_disable_unref(vm->child_source);
        vm->stop_timer = sd_event_source_disable_unref(vm->stop_timer);
        vm->start_timer = sd_event_source_disable_unref(vm->start_timer);
        vm_ready_timer_disarm(vm);
        vm_restart_cancel(vm);
        restart_tracker_done(&vm->restarts);
        vm->services = vm_services_free(vm->services);
        vm_spec_done(&vm->spec);
        strv_free(vm->argv);
        strv_free(vm->stale_urls);
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

void vm_set_grpc_prober(Vm *vm, const GrpcProber *prober) {
        vm_services_set_grpc_prober(vm->services, prober);
}

void vm_set_cri_fallback(Vm *vm, const ProxyFallback *fallback) {
        vm_services_set_cri_fallback(vm->services, fallback);
}

void vm_emit(Vm *vm, HydraEvent *ev) {
        if (vm->ctx.emit)
                vm->ctx.emit(ev, vm, vm->ctx.userdata);
}

/* --- what others read --- */

Role vm_role(const Vm *vm) {
        return vm->role;
}

const char *vm_name(const Vm *vm) {
        return vm->name;
}

bool vm_is_registered(const Vm *vm) {
        return vm->registered;
}

const VmSpec *vm_get_spec(const Vm *vm) {
        return vm->registered ? &vm->spec : NULL;
}

const char *vm_console_log(const Vm *vm) {
        return vm->console_path;
}

bool vm_has_run_dir(const Vm *vm) {
        return access(vm->run_dir, F_OK) == 0;
}

void vm_get_status(const Vm *vm, VmStatus *ret) {
        VmStatus st = {
                .role = vm->role,
                .name = vm->name,
                .registered = vm->registered,
                .spec = vm->registered ? &vm->spec : NULL,
                .generation = vm->generation,
                .state = vm->state,
                .pid = vm->pid,
                .uptime_usec = vm_uptime_usec(vm),
                .last_exit = &vm->last_exit,
                .last_error = vm->last_error.code < 0 ? vm->last_error.message : NULL,
                .restart_count = vm->restart_count,
                .next_restart_usec = vm->next_restart_usec,
                .console_log = vm->console_path,
                .qmp_socket = vm->qmp_path,
                .console_socket = vm_services_console_socket(vm->services),
                .cri_socket = vm_services_cri_socket(vm->services),
                .machine = vm->machine_name,
                .machine_scope = vm->machine_scope,
                .disk_path = vm->prepared.disk_path,
                .seed_path = vm->prepared.seed_path,
                .progress = { .step = vm->progress.step, .what = vm->progress.what, .bytes = vm->progress.bytes,
                              .total = vm->progress.total, .rate = vm->progress.rate },
                .drives = vm->drives,
                .n_drives = vm->n_drives,
        };

        st.ready = vm_services_ready(vm->services, &st.ready_since_usec, &st.ready_detail);
        *ret = st;
}

/* The first line of an error, at most max bytes (cut between UTF-8 sequences), "..." where it was cut. */
static void brief(const char *s, size_t max, char *buf, size_t size) {
        size_t n = strcspn(s, "\r\n");
        bool cut = s[n] != 0 && s[n + strspn(s + n, "\r\n")] != 0;

        if (n > max) {
                n = max;
                while (n > 0 && ((unsigned char) s[n] & 0xC0) == 0x80)
                        n--;
                cut = true;
        }
        (void) snprintf(buf, size, "%.*s%s", (int) n, s, cut ? "..." : "");
}

void vm_cri_unavailable_reason(const VmStatus *st, char *buf, size_t size) {
        const char *name = st->name;
        char why[VM_CRI_REASON_ERROR_MAX + 8] = "";

        if (!st->registered) {
                (void) snprintf(buf, size, "VM '%s' is not registered: it has no containerd (hydractl register %s)",
                                name, name);
                return;
        }
        switch (st->state) {
        case VM_STATE_DEFINED:
                (void) snprintf(buf, size, "VM '%s' has not been started: its containerd is not running "
                                "(hydractl start %s)", name, name);
                break;
        case VM_STATE_PREPARING:
        case VM_STATE_STARTING:
                (void) snprintf(buf, size, "VM '%s' is %s: containerd is not ready yet", name,
                                vm_state_to_string(st->state));
                break;
        case VM_STATE_RUNNING:
                (void) snprintf(buf, size, "VM '%s' is running, but this connection was made while it was not: "
                                "connect again", name);
                break;
        case VM_STATE_STOPPING:
                (void) snprintf(buf, size, "VM '%s' is stopping: its containerd is going away", name);
                break;
        case VM_STATE_FAILED:
        case VM_STATE_CRASHED:
                if (st->last_error)
                        brief(st->last_error, VM_CRI_REASON_ERROR_MAX, why, sizeof(why));
                else if (st->last_exit && st->last_exit->reason[0])
                        brief(st->last_exit->reason, VM_CRI_REASON_ERROR_MAX, why, sizeof(why));
                /* The restart policy brings it back by itself: no command to suggest. */
                (void) snprintf(buf, size, "VM '%s' %s%s%s%s: its containerd is not running (%s%s)", name,
                                st->state == VM_STATE_FAILED ? "failed" : "crashed", why[0] ? " (" : "", why,
                                why[0] ? ")" : "",
                                st->next_restart_usec > 0 ? "a restart is scheduled" : "hydractl start ",
                                st->next_restart_usec > 0 ? "" : name);
                break;
        case VM_STATE_STOPPED:
        default:
                (void) snprintf(buf, size, "VM '%s' is stopped: its containerd is not running (hydractl start %s)",
                                name, name);
                break;
        }
}
