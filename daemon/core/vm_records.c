/* SPDX-License-Identifier: MIT */
/* A Vm's records on disk, each replaced atomically (store.c): the registered spec (STATE_DIR/ROLE/spec.pb), the
 * resting state with the last exit and error (STATE_DIR/ROLE/state.json), and while there is a process what a
 * restarted hydrad needs to find it again (RUN_DIR/ROLE/runtime.json). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "store.h"
#include "vm-internal.h"

#define SPEC_FILE "spec.pb"
#define SPEC_MAX_SIZE (1024U * 1024U)
#define RUNTIME_FILE "runtime.json"
#define STATE_FILE "state.json"

/* --- runtime --- */

static void on_runtime_written(int r, const HydraError *err, void *userdata) {
        Vm *vm = userdata;

        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': cannot record the runtime state (a restarted hydrad will not find "
                               "this QEMU): %s", vm->name, err->message);
}

static void on_record_removed(int r, const HydraError *err, void *userdata) {
        Vm *vm = userdata;

        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': %s", vm->name, err->message);
}

/* Queues dir/name := o as compact JSON (taking o); what goes wrong reaches done, as a failed write would. */
static void record_queue(Vm *vm, const char *dir, const char *name, json_t *o, disk_job_done_t done) {
        _cleanup_free_ char *data = o ? json_dumps(o, JSON_COMPACT) : NULL;
        HydraError err;
        int r;

        json_decref(o);
        r = data ? disk_queue_replace(vm->disk, dir, name, data, strlen(data), 0600, done, vm) : -ENOMEM;
        if (r < 0) {
                hydra_error_set(&err, r, "out of memory");
                done(r, &err, vm);
        }
}

/* RUN_DIR/ROLE/runtime.json: what a restarted hydrad needs to find its QEMU again. Replaced atomically at every
 * state with a process; removed when the process is gone. */
void vm_runtime_save(Vm *vm) {
        uint64_t ready_since;
        json_t *o;

        (void) vm_services_ready(vm->services, &ready_since, NULL);
        o = json_pack("{s:I, s:I, s:s, s:I, s:I, s:s, s:s*, s:s*, s:I}", "pid", (json_int_t) vm->pid, "start_time",
                      (json_int_t) vm->start_ticks, "qmp_socket", vm->qmp_path, "spec_generation",
                      (json_int_t) vm->generation, "spawn_realtime_usec",
                      (json_int_t) (vm_now_usec(CLOCK_REALTIME) - (vm_now_usec(CLOCK_MONOTONIC) - vm->spawn_usec)),
                      "state", vm_state_to_string(vm->state), "disk_path", vm->prepared.disk_path, "seed_path",
                      vm->prepared.seed_path, "ready_since_usec", (json_int_t) ready_since);
        record_queue(vm, vm->run_dir, RUNTIME_FILE, o, on_runtime_written);
}

void vm_runtime_update(Vm *vm) {
        if (vm->pid > 0 && vm_state_has_process(vm->state))
                vm_runtime_save(vm);
}

void vm_runtime_record_done(VmRuntimeRecord *rec) {
        free(rec->qmp_socket);
        free(rec->state);
        free(rec->disk_path);
        free(rec->seed_path);
        *rec = (VmRuntimeRecord) {};
}

int vm_runtime_load(Vm *vm, VmRuntimeRecord *ret) {
        _cleanup_free_ void *data = NULL;
        const char *qmp = NULL, *state = NULL, *disk = NULL, *seed = NULL;
        json_int_t pid = 0, ticks = 0, spawned = 0, ready_since = 0;
        VmRuntimeRecord rec = {};
        HydraError err;
        json_t *o;
        size_t size;
        int r;

        hydra_error_clear(&err);
        r = store_read(vm->run_dir, RUNTIME_FILE, 64 * 1024, &data, &size, &err);
        if (r == -ENOENT)
                return 0;
        if (r < 0) {
                log_vm_warning(vm->name, "VM '%s': %s; ignoring it", vm->name, err.message);
                return 0;
        }
        o = json_loadb(data, size, 0, NULL);
        if (!o || json_unpack(o, "{s:I, s:I, s:s, s?I, s?s, s?s, s?s, s?I}", "pid", &pid, "start_time", &ticks,
                              "qmp_socket", &qmp, "spawn_realtime_usec", &spawned, "state", &state, "disk_path", &disk,
                              "seed_path", &seed, "ready_since_usec", &ready_since) < 0 ||
            pid <= 1 || ticks < 0 || spawned < 0 || ready_since < 0) {
                log_vm_warning(vm->name, "VM '%s': '%s/%s' is not a valid runtime record; ignoring it", vm->name,
                               vm->run_dir, RUNTIME_FILE);
                json_decref(o);
                vm_runtime_remove(vm);
                return 0;
        }
        rec = (VmRuntimeRecord) { .pid = (pid_t) pid, .start_ticks = (uint64_t) ticks,
                                  .spawn_realtime_usec = (uint64_t) spawned, .ready_since_usec = (uint64_t) ready_since };
        r = strdup_or_null(&rec.qmp_socket, qmp);
        if (r >= 0)
                r = strdup_or_null(&rec.state, state);
        if (r >= 0)
                r = strdup_or_null(&rec.disk_path, disk);
        if (r >= 0)
                r = strdup_or_null(&rec.seed_path, seed);
        json_decref(o);
        if (r < 0) {
                vm_runtime_record_done(&rec);
                return r;
        }
        *ret = rec;
        return 1;
}

void vm_runtime_remove(Vm *vm) {
        if (disk_queue_remove(vm->disk, vm->run_dir, RUNTIME_FILE, on_record_removed, vm) < 0)
                log_vm_warning(vm->name, "VM '%s': cannot remove its runtime record: out of memory", vm->name);
}

static void on_state_written(int r, const HydraError *err, void *userdata) {
        Vm *vm = userdata;

        if (r < 0)
                log_vm_warning(vm->name, "VM '%s': cannot record its state: %s", vm->name, err->message);
}

/* --- state --- */

/* STATE_DIR/ROLE/state.json: a resting state (stopped, failed, crashed) with the last exit and error, so that a
 * restarted hydrad shows what happened instead of "defined"; or "preparing", so that a hydrad that dies during the
 * preparation is followed by one that says so. */
void vm_state_save(Vm *vm) {
        json_t *o;

        o = json_pack("{s:s, s:{s:b, s:i, s:i, s:s, s:I}, s:s}", "state", vm_state_to_string(vm->state), "last_exit",
                      "exited", vm->last_exit.exited, "code", vm->last_exit.code, "signal", vm->last_exit.signal,
                      "reason", vm->last_exit.reason, "time_usec", (json_int_t) vm->last_exit.time_usec, "last_error",
                      vm->last_error.code < 0 ? vm->last_error.message : "");
        record_queue(vm, vm->state_dir, STATE_FILE, o, on_state_written);
}

void vm_state_load(Vm *vm) {
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

/* --- spec --- */

typedef struct SpecJob {
        char *dir;
        void *data;
        size_t size;
} SpecJob;

static void spec_job_free(void *arg) {
        SpecJob *j = arg;

        free(j->dir);
        free(j->data);
        free(j);
}

static int spec_job_run(void *arg, HydraError *err) {
        SpecJob *j = arg;
        int r;

        r = mkdir_p(j->dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create '%s': %s", j->dir, strerror(-r));
        /* 0600: the spec may hold download credentials. */
        return store_write_atomic(j->dir, SPEC_FILE, j->data, j->size, 0600, err);
}

int vm_spec_store(Vm *vm, const VmSpec *spec, disk_job_done_t done, void *userdata, HydraError *err) {
        SpecJob *j;
        int r;

        j = calloc(1, sizeof(*j));
        if (!j)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        r = vm->ctx.codec->encode(spec, &j->data, &j->size);
        if (r < 0) {
                spec_job_free(j);
                return hydra_error_set(err, r, "encode spec: %s", strerror(-r));
        }
        j->dir = strdup(vm->state_dir);
        if (!j->dir) {
                spec_job_free(j);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        r = disk_queue_call(vm->disk, spec_job_run, j, spec_job_free, done, userdata);
        return r < 0 ? hydra_error_set(err, r, "out of memory") : 0;
}

int vm_spec_read(Vm *vm, VmSpec *ret, HydraError *err) {
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
        r = vm->ctx.codec->decode(data, size, &spec, err);
        if (r < 0)
                return hydra_error_prefix(err, "'%s/%s': ", vm->state_dir, SPEC_FILE);
        r = vm_spec_apply_defaults(&spec);
        if (r >= 0)
                r = vm_spec_validate(&spec, err);
        if (r < 0) {
                vm_spec_done(&spec);
                return hydra_error_prefix(err, "'%s/%s': ", vm->state_dir, SPEC_FILE);
        }
        *ret = spec;
        return 1;
}
