/* SPDX-License-Identifier: MIT */
#include <grp.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "vm.h"
#include "vm_services.h"

/* What hydrad provides around a running QEMU: the serial console relay, the readiness probe, and for the
 * isolated VM the CRI socket. All of it on the loop; vm.c calls in at launch, when the guest may run, on state
 * changes and at teardown. */

#define PROBE_INTERVAL_USEC (1ULL * 1000000ULL)
#define PROBE_TIMEOUT_USEC (5ULL * 1000000ULL)
/* How long a service gets to answer the TCP probe's nudge (probe.h). */
#define PROBE_TCP_HOLD_USEC (2ULL * 1000000ULL)

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* Resolved once at start-up (config_finish): NSS may block, the loop never asks it. */
static gid_t socket_gid(Vm *vm) {
        return manager_get_config(vm->manager)->socket_gid;
}

/* --- readiness --- */

static void ready_set(Vm *vm, bool ready, const char *detail) {
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_READY };
        bool changed = vm->ready != ready;

        free(vm->ready_detail);
        vm->ready_detail = detail ? strdup(detail) : NULL;
        if (!changed)
                return;
        vm->ready = ready;
        vm->ready_since_usec = ready ? realtime_usec() : 0;
        log_vm_info(vm->name, "VM '%s': %s%s%s", vm->name, ready ? "ready" : "not ready", detail ? ": " : "",
                    strempty(detail));
        vm_runtime_update(vm);
        manager_emit(vm->manager, &ev, vm);
        vm_ready_changed(vm);
}

static void probe_schedule(Vm *vm, uint64_t delay);

static void probe_result(Vm *vm, bool ready, const char *detail) {
        if (ready) {
                ready_set(vm, true, detail);
                return;
        }
        free(vm->ready_detail);
        vm->ready_detail = detail ? strdup(detail) : NULL;
        probe_schedule(vm, PROBE_INTERVAL_USEC);
}

static void on_tcp_probe(TcpProbe *p, bool ready, const char *why, void *userdata) {
        Vm *vm = userdata;

        vm->tcp_probe = NULL;
        probe_result(vm, ready, ready ? "tcp: answered" : why);
}

static void on_grpc_probe(void *p, bool ready, const char *detail, void *userdata) {
        _cleanup_free_ char *d = NULL;
        Vm *vm = userdata;

        vm->grpc_probe = NULL;
        if (asprintf(&d, "containerd %s%s", ready ? "" : "not answering: ", strempty(detail)) < 0)
                d = NULL;
        probe_result(vm, ready, d);
}

/* The host side of the forward that carries the probe. A forward bound to every address is reached on
 * loopback. */
static const PortForward *probe_forward(const Vm *vm, uint32_t guest_port) {
        for (size_t i = 0; i < vm->spec.n_forwards; i++) {
                const PortForward *f = &vm->spec.forwards[i];

                if (f->protocol == FORWARD_TCP && f->guest_port == guest_port)
                        return f;
        }
        return NULL;
}

static const char *forward_host(const PortForward *f) {
        return isempty(f->host_addr) || streq(f->host_addr, "0.0.0.0") ? "127.0.0.1" : f->host_addr;
}

static int on_probe_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        Vm *vm = userdata;
        const GrpcProber *prober = manager_get_grpc_prober(vm->manager);
        const PortForward *f;
        char target[64];
        int r;

        vm->probe_timer = sd_event_source_disable_unref(vm->probe_timer);
        if (vm->state != VM_STATE_RUNNING || vm->ready)
                return 0;
        f = probe_forward(vm, vm->spec.supervision.probe_port);
        if (!f)
                return 0; /* validation guarantees one; a spec without it never probes */

        if (vm->spec.supervision.probe == PROBE_TCP) {
                r = tcp_probe_start(manager_get_event(vm->manager), forward_host(f), (uint16_t) f->host_port,
                                    PROBE_TCP_HOLD_USEC, PROBE_TIMEOUT_USEC, on_tcp_probe, vm, &vm->tcp_probe);
        } else {
                if (!prober)
                        return 0;
                (void) snprintf(target, sizeof(target), "%s:%" PRIu32, forward_host(f), f->host_port);
                r = prober->start(manager_get_event(vm->manager), target, PROBE_TIMEOUT_USEC, on_grpc_probe, vm,
                                  &vm->grpc_probe);
        }
        if (r < 0) {
                log_vm_warning_errno(vm->name, r, "VM '%s': cannot start the readiness probe: %m", vm->name);
                probe_schedule(vm, PROBE_INTERVAL_USEC);
        }
        return 0;
}

static void probe_schedule(Vm *vm, uint64_t delay) {
        vm->probe_timer = sd_event_source_disable_unref(vm->probe_timer);
        if (sd_event_add_time_relative(manager_get_event(vm->manager), &vm->probe_timer, CLOCK_MONOTONIC, delay, 0,
                                       on_probe_timer, vm) < 0)
                log_vm_warning(vm->name, "VM '%s': cannot schedule the readiness probe", vm->name);
        else
                (void) sd_event_source_set_description(vm->probe_timer, "vm-probe");
}

static void probe_stop(Vm *vm) {
        const GrpcProber *prober = manager_get_grpc_prober(vm->manager);

        vm->probe_timer = sd_event_source_disable_unref(vm->probe_timer);
        vm->tcp_probe = tcp_probe_cancel(vm->tcp_probe);
        if (vm->grpc_probe && prober)
                prober->cancel(vm->grpc_probe);
        vm->grpc_probe = NULL;
}

/* A new guest boot (a new QEMU, or a guest reset): the probe starts over. */
void vm_ready_begin(Vm *vm) {
        HydraError err;

        probe_stop(vm);
        vm->ready_matcher = line_matcher_free(vm->ready_matcher);
        free(vm->ready_detail);
        vm->ready_detail = NULL;
        if (vm->ready)
                ready_set(vm, false, "the guest restarted");

        switch (vm->spec.supervision.probe) {
        case PROBE_CONSOLE:
                hydra_error_clear(&err);
                if (line_matcher_new(vm->spec.supervision.probe_pattern ? vm->spec.supervision.probe_pattern
                                                                         : PROBE_DEFAULT_CONSOLE_PATTERN,
                                     &vm->ready_matcher, &err) < 0)
                        log_vm_warning(vm->name, "VM '%s': readiness pattern: %s", vm->name, err.message);
                break;
        case PROBE_TCP:
        case PROBE_CONTAINERD:
                /* The probe needs the guest running: it begins in vm_services_up(). */
                break;
        default:
                break;
        }
}

static void on_console_data(Console *c, const void *data, size_t size, void *userdata) {
        Vm *vm = userdata;
        HydraEvent ev = { .role = vm->role, .type = HYDRA_EVENT_CONSOLE, .data = data, .size = size };

        if (vm->ready_matcher && !vm->ready && line_matcher_feed(vm->ready_matcher, data, size)) {
                _cleanup_free_ char *d = NULL;

                if (asprintf(&d, "console: matched '%s'", vm->spec.supervision.probe_pattern
                                                                  ? vm->spec.supervision.probe_pattern
                                                                  : PROBE_DEFAULT_CONSOLE_PATTERN) < 0)
                        d = NULL;
                ready_set(vm, true, d);
        }
        manager_emit(vm->manager, &ev, vm);
}

/* --- the CRI socket --- */

static void cri_start(Vm *vm) {
        uint32_t port = vm->spec.supervision.probe == PROBE_CONTAINERD ? vm->spec.supervision.probe_port
                                                                        : SPEC_DEFAULT_CONTAINERD_PORT;
        const PortForward *f;
        HydraError err;

        if (vm->role != ROLE_ISOLATED || vm->cri)
                return;
        f = probe_forward(vm, port);
        if (!f) {
                log_vm_debug(vm->name, "VM '%s': no TCP forward to guest port %" PRIu32 ": no CRI socket", vm->name,
                             port);
                return;
        }
        hydra_error_clear(&err);
        if (proxy_new(manager_get_event(vm->manager), vm->cri_path, 0660, socket_gid(vm), forward_host(f),
                      (uint16_t) f->host_port, &vm->cri, &err) < 0) {
                log_vm_warning(vm->name, "VM '%s': no CRI socket: %s", vm->name, err.message);
                return;
        }
        log_vm_info(vm->name, "VM '%s': containerd at %s (forwarded to %s:%" PRIu32 ")", vm->name, vm->cri_path,
                    forward_host(f), f->host_port);
}

/* --- what vm.c calls --- */

int vm_console_open(Vm *vm, HydraError *err) {
        ConsoleConfig cfg = {
                .log_path = vm->console_path,
                .listen_path = vm->console_sock_path,
                .listen_mode = 0660,
                .listen_gid = socket_gid(vm),
                .on_data = on_console_data,
                .userdata = vm,
        };

        if (vm->console)
                return 0;
        return console_new(manager_get_event(vm->manager), &cfg, &vm->console, err);
}

void vm_services_up(Vm *vm) {
        if ((vm->spec.supervision.probe == PROBE_TCP || vm->spec.supervision.probe == PROBE_CONTAINERD) &&
            !vm->ready)
                probe_schedule(vm, PROBE_INTERVAL_USEC);
        cri_start(vm);
}

void vm_services_down(Vm *vm) {
        probe_stop(vm);
        vm->ready_matcher = line_matcher_free(vm->ready_matcher);
        if (vm->ready)
                ready_set(vm, false, "not running");
        vm->ready_detail = mfree(vm->ready_detail);
        vm->cri = proxy_free(vm->cri);
}

void vm_services_free(Vm *vm) {
        vm_services_down(vm);
        vm->console = console_free(vm->console);
}

void vm_services_restore_ready(Vm *vm, uint64_t since_usec) {
        vm->ready = true;
        vm->ready_since_usec = since_usec;
        free(vm->ready_detail);
        vm->ready_detail = strdup("ready before hydrad restarted");
}
