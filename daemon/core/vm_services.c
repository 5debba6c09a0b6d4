/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "fs.h"
#include "log.h"
#include "macro.h"
#include "proxy.h"
#include "vm_services.h"

#define PROBE_INTERVAL_USEC (1ULL * 1000000ULL)
#define PROBE_TIMEOUT_USEC (5ULL * 1000000ULL)
/* How long a service gets to answer the TCP probe's nudge (probe.h). */
#define PROBE_TCP_HOLD_USEC (2ULL * 1000000ULL)
/* The raw console bytes kept for vm_services_console_tail(). */
#define CONSOLE_TAIL_RAW 2048U

static uint64_t realtime_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

struct VmServices {
        VmServicesConfig cfg;
        VmServicesCallbacks cb;
        void *userdata;
        const GrpcProber *grpc_prober;  /* borrowed, may be NULL */
        bool up;                        /* between vm_services_up() and vm_services_down() */

        Console *console;               /* serial console relay: console.log, console.sock */
        LineMatcher *ready_matcher;     /* probe console */
        TcpProbe *tcp_probe;            /* probe tcp, in flight */
        void *grpc_probe;               /* probe containerd, in flight (GrpcProber) */
        sd_event_source *probe_timer;
        bool ready;
        uint64_t ready_since_usec;      /* CLOCK_REALTIME */
        char *ready_detail;             /* what GetVm shows: the probe's word, and while not ready the guest's */
        char *probe_detail;             /* not ready: the probe's last word */
        LineMatcher *failure_matcher;   /* not ready: the guest's last systemd failure line (GUEST_FAILURE_PATTERN) */
        Proxy *cri;                     /* RUN_DIR/isolated/containerd.sock -> containerd's forward */
        const ProxyFallback *cri_fallback; /* borrowed, may be NULL: answers the CRI socket while the guest is down */

        /* The last bytes this QEMU printed on its console, for an error message: kept as they pass (no file read). */
        char tail[CONSOLE_TAIL_RAW];
        size_t tail_len;
};

/* --- readiness --- */

/* While not ready: the probe's last word, and what the guest reported, e.g. "containerd not answering: connection
 * refused (guest console: [FAILED] Failed to start csi-grpc-proxy.service - ...)". */
static void detail_compose(VmServices *vs) {
        const char *guest = line_matcher_last(vs->failure_matcher);
        char *d;

        if (!guest)
                d = vs->probe_detail ? strdup(vs->probe_detail) : NULL;
        else if (asprintf(&d, "%s%sguest console: %s%s", strempty(vs->probe_detail), vs->probe_detail ? " (" : "",
                          guest, vs->probe_detail ? ")" : "") < 0)
                d = NULL;
        free(vs->ready_detail);
        vs->ready_detail = d;
}

static void ready_set(VmServices *vs, bool ready, const char *detail) {
        bool changed = vs->ready != ready;

        free(vs->ready_detail);
        vs->ready_detail = detail ? strdup(detail) : NULL;
        vs->probe_detail = mfree(vs->probe_detail);
        if (!changed)
                return;
        vs->ready = ready;
        vs->ready_since_usec = ready ? realtime_usec() : 0;
        log_vm_info(vs->cfg.name, "VM '%s': %s%s%s", vs->cfg.name, ready ? "ready" : "not ready", detail ? ": " : "",
                    strempty(detail));
        if (vs->cb.ready_changed)
                vs->cb.ready_changed(vs, ready, vs->userdata);
}

static void probe_schedule(VmServices *vs, uint64_t delay);

static void probe_result(VmServices *vs, bool ready, const char *detail) {
        if (ready) {
                ready_set(vs, true, detail);
                return;
        }
        free(vs->probe_detail);
        vs->probe_detail = detail ? strdup(detail) : NULL;
        detail_compose(vs);
        probe_schedule(vs, PROBE_INTERVAL_USEC);
}

static void on_tcp_probe(TcpProbe *p, bool ready, const char *why, void *userdata) {
        VmServices *vs = userdata;

        vs->tcp_probe = NULL;
        probe_result(vs, ready, ready ? "tcp: answered" : why);
}

static void on_grpc_probe(void *p, bool ready, const char *detail, void *userdata) {
        _cleanup_free_ char *d = NULL;
        VmServices *vs = userdata;

        vs->grpc_probe = NULL;
        if (asprintf(&d, "containerd %s%s", ready ? "" : "not answering: ", strempty(detail)) < 0)
                d = NULL;
        probe_result(vs, ready, d);
}

/* The host side of the forward that carries the probe. A forward bound to every address is reached on
 * loopback. */
static const PortForward *probe_forward(const VmServices *vs, uint32_t guest_port) {
        for (size_t i = 0; i < vs->cfg.spec->n_forwards; i++) {
                const PortForward *f = &vs->cfg.spec->forwards[i];

                if (f->protocol == FORWARD_TCP && f->guest_port == guest_port)
                        return f;
        }
        return NULL;
}

static const char *forward_host(const PortForward *f) {
        return isempty(f->host_addr) || streq(f->host_addr, "0.0.0.0") ? "127.0.0.1" : f->host_addr;
}

static int on_probe_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        VmServices *vs = userdata;
        const GrpcProber *prober = vs->grpc_prober;
        const PortForward *f;
        char target[64];
        int r;

        vs->probe_timer = sd_event_source_disable_unref(vs->probe_timer);
        if (!vs->up || vs->ready)
                return 0;
        f = probe_forward(vs, vs->cfg.spec->supervision.probe_port);
        if (!f)
                return 0; /* validation guarantees one; a spec without it never probes */

        if (vs->cfg.spec->supervision.probe == PROBE_TCP) {
                r = tcp_probe_start(vs->cfg.event, forward_host(f), (uint16_t) f->host_port,
                                    PROBE_TCP_HOLD_USEC, PROBE_TIMEOUT_USEC, on_tcp_probe, vs, &vs->tcp_probe);
        } else {
                if (!prober)
                        return 0;
                (void) snprintf(target, sizeof(target), "%s:%" PRIu32, forward_host(f), f->host_port);
                r = prober->start(vs->cfg.event, target, PROBE_TIMEOUT_USEC, on_grpc_probe, vs,
                                  &vs->grpc_probe);
        }
        if (r < 0) {
                log_vm_warning_errno(vs->cfg.name, r, "VM '%s': cannot start the readiness probe: %m", vs->cfg.name);
                probe_schedule(vs, PROBE_INTERVAL_USEC);
        }
        return 0;
}

static void probe_schedule(VmServices *vs, uint64_t delay) {
        vs->probe_timer = sd_event_source_disable_unref(vs->probe_timer);
        if (sd_event_add_time_relative(vs->cfg.event, &vs->probe_timer, CLOCK_MONOTONIC, delay, 0,
                                       on_probe_timer, vs) < 0)
                log_vm_warning(vs->cfg.name, "VM '%s': cannot schedule the readiness probe", vs->cfg.name);
        else
                (void) sd_event_source_set_description(vs->probe_timer, "vs-probe");
}

static void probe_stop(VmServices *vs) {
        const GrpcProber *prober = vs->grpc_prober;

        vs->probe_timer = sd_event_source_disable_unref(vs->probe_timer);
        vs->tcp_probe = tcp_probe_cancel(vs->tcp_probe);
        if (vs->grpc_probe && prober)
                prober->cancel(vs->grpc_probe);
        vs->grpc_probe = NULL;
}

/* A new guest boot (a new QEMU, or a guest reset): the probe starts over. */
void vm_services_ready_begin(VmServices *vs) {
        HydraError err;

        probe_stop(vs);
        vs->ready_matcher = line_matcher_free(vs->ready_matcher);
        free(vs->ready_detail);
        vs->ready_detail = NULL;
        vs->probe_detail = mfree(vs->probe_detail);
        if (vs->ready)
                ready_set(vs, false, "the guest restarted");
        /* A new QEMU (not a guest reset): its console starts afresh. */
        if (!vs->up)
                vs->tail_len = 0;

        if (vs->cfg.spec->supervision.probe != PROBE_NONE) {
                hydra_error_clear(&err);
                if (vs->failure_matcher)
                        line_matcher_reset(vs->failure_matcher);
                else if (line_matcher_new_last(GUEST_FAILURE_PATTERN, &vs->failure_matcher, &err) < 0)
                        log_vm_warning(vs->cfg.name, "VM '%s': guest failure pattern: %s", vs->cfg.name, err.message);
        } else
                vs->failure_matcher = line_matcher_free(vs->failure_matcher);

        switch (vs->cfg.spec->supervision.probe) {
        case PROBE_CONSOLE:
                hydra_error_clear(&err);
                if (line_matcher_new(vs->cfg.spec->supervision.probe_pattern ? vs->cfg.spec->supervision.probe_pattern
                                                                         : PROBE_DEFAULT_CONSOLE_PATTERN,
                                     &vs->ready_matcher, &err) < 0)
                        log_vm_warning(vs->cfg.name, "VM '%s': readiness pattern: %s", vs->cfg.name, err.message);
                break;
        case PROBE_TCP:
        case PROBE_CONTAINERD:
                /* The probe needs the guest running: it begins in vm_services_up(). */
                break;
        default:
                break;
        }
}

static void tail_append(VmServices *vs, const void *data, size_t size) {
        if (size >= sizeof(vs->tail)) {
                memcpy(vs->tail, (const char *) data + size - sizeof(vs->tail), sizeof(vs->tail));
                vs->tail_len = sizeof(vs->tail);
                return;
        }
        if (vs->tail_len + size > sizeof(vs->tail)) {
                size_t drop = vs->tail_len + size - sizeof(vs->tail);

                memmove(vs->tail, vs->tail + drop, vs->tail_len - drop);
                vs->tail_len -= drop;
        }
        memcpy(vs->tail + vs->tail_len, data, size);
        vs->tail_len += size;
}

static void on_console_data(Console *c, const void *data, size_t size, void *userdata) {
        VmServices *vs = userdata;

        tail_append(vs, data, size);
        /* What the guest reports while it is not ready goes into the readiness detail at once. */
        if (!vs->ready && vs->failure_matcher && line_matcher_feed(vs->failure_matcher, data, size))
                detail_compose(vs);

        if (vs->ready_matcher && !vs->ready && line_matcher_feed(vs->ready_matcher, data, size)) {
                _cleanup_free_ char *d = NULL;

                if (asprintf(&d, "console: matched '%s'", vs->cfg.spec->supervision.probe_pattern
                                                                  ? vs->cfg.spec->supervision.probe_pattern
                                                                  : PROBE_DEFAULT_CONSOLE_PATTERN) < 0)
                        d = NULL;
                ready_set(vs, true, d);
        }
        if (vs->cb.console_data)
                vs->cb.console_data(vs, data, size, vs->userdata);
}

/* --- the CRI socket --- */

/* The TCP forward to the guest's containerd: the probe's port with a containerd probe, else containerd's usual. */
static const PortForward *cri_forward(const VmServices *vs) {
        uint32_t port = vs->cfg.spec->supervision.probe == PROBE_CONTAINERD ? vs->cfg.spec->supervision.probe_port
                                                                        : SPEC_DEFAULT_CONTAINERD_PORT;

        return vs->cfg.cri ? probe_forward(vs, port) : NULL;
}

/* The socket is there for as long as the spec has the forward (registered, running or not), so that a client
 * (crismux, kubelet) gets an answer at once instead of "no such file": while the guest is down, the fallback's
 * UNAVAILABLE with the reason. Returns 0, or <0 if it cannot be bound (logged). */
static int cri_listen(VmServices *vs) {
        HydraError err;
        int r;

        if (vs->cri)
                return 0;
        /* Made at preparation otherwise: a VM registered but never started has no RUN_DIR/ROLE yet. */
        r = mkdir_private(vs->cfg.run_dir, vs->cfg.socket_gid);
        if (r < 0) {
                log_vm_warning_errno(vs->cfg.name, r, "VM '%s': no CRI socket: cannot create '%s': %m", vs->cfg.name,
                                     vs->cfg.run_dir);
                return r;
        }
        hydra_error_clear(&err);
        if (proxy_new(vs->cfg.event, vs->cfg.cri_path, 0660, vs->cfg.socket_gid, NULL, 0, &vs->cri, &err) < 0) {
                log_vm_warning(vs->cfg.name, "VM '%s': no CRI socket: %s", vs->cfg.name, err.message);
                return err.code;
        }
        proxy_set_fallback(vs->cri, vs->cri_fallback);
        return 0;
}

/* While the guest runs: the forward of the spec it was started with. A guest reset keeps what is there. */
static void cri_start(VmServices *vs) {
        const PortForward *f = cri_forward(vs);
        HydraError err;

        if (!vs->cfg.cri || proxy_has_target(vs->cri))
                return;
        if (!f) {
                log_vm_debug(vs->cfg.name, "VM '%s': no TCP forward to containerd's guest port: no CRI socket",
                             vs->cfg.name);
                vs->cri = proxy_free(vs->cri);
                return;
        }
        if (cri_listen(vs) < 0)
                return;
        hydra_error_clear(&err);
        if (proxy_set_target(vs->cri, forward_host(f), (uint16_t) f->host_port, &err) < 0) {
                log_vm_warning(vs->cfg.name, "VM '%s': CRI socket: %s", vs->cfg.name, err.message);
                return;
        }
        log_vm_info(vs->cfg.name, "VM '%s': containerd at %s (forwarded to %s:%" PRIu32 ")", vs->cfg.name,
                    vs->cfg.cri_path, forward_host(f), f->host_port);
}

/* While the guest is down: the socket stays if the (current) spec has the forward, without a target. */
static void cri_rest(VmServices *vs) {
        proxy_clear_target(vs->cri);
        if (!cri_forward(vs)) {
                vs->cri = proxy_free(vs->cri);
                return;
        }
        (void) cri_listen(vs);
}

void vm_services_spec_changed(VmServices *vs) {
        /* A running guest keeps the forwards it was started with: the next stop looks at the new spec. */
        if (!vs->up)
                cri_rest(vs);
}

void vm_services_set_cri_fallback(VmServices *vs, const ProxyFallback *fallback) {
        vs->cri_fallback = fallback;
        if (vs->cri)
                proxy_set_fallback(vs->cri, fallback);
}

/* --- the object --- */

int vm_services_new(const VmServicesConfig *cfg, const VmServicesCallbacks *cb, void *userdata, VmServices **ret) {
        VmServices *vs;

        vs = calloc(1, sizeof(*vs));
        if (!vs)
                return -ENOMEM;
        *vs = (VmServices) { .cfg = *cfg, .cb = *cb, .userdata = userdata };
        *ret = vs;
        return 0;
}

VmServices *vm_services_free(VmServices *vs) {
        if (!vs)
                return NULL;
        /* Nobody listens any more (hydrad exits, the VM carries on): no callback. */
        vs->cb = (VmServicesCallbacks) {};
        vm_services_close(vs);
        free(vs);
        return NULL;
}

void vm_services_set_grpc_prober(VmServices *vs, const GrpcProber *prober) {
        vs->grpc_prober = prober;
}

int vm_services_console_open(VmServices *vs, HydraError *err) {
        ConsoleConfig cfg = {
                .log_path = vs->cfg.console_log_path,
                .listen_path = vs->cfg.console_sock_path,
                .listen_mode = 0660,
                .listen_gid = vs->cfg.socket_gid,
                .on_data = on_console_data,
                .userdata = vs,
        };

        if (vs->console)
                return 0;
        return console_new(vs->cfg.event, &cfg, &vs->console, err);
}

Console *vm_services_console(VmServices *vs) {
        return vs->console;
}

void vm_services_up(VmServices *vs) {
        vs->up = true;
        if ((vs->cfg.spec->supervision.probe == PROBE_TCP || vs->cfg.spec->supervision.probe == PROBE_CONTAINERD) &&
            !vs->ready)
                probe_schedule(vs, PROBE_INTERVAL_USEC);
        cri_start(vs);
}

/* The probes and the readiness: what goes when the guest stops. */
static void services_stop(VmServices *vs) {
        vs->up = false;
        probe_stop(vs);
        vs->ready_matcher = line_matcher_free(vs->ready_matcher);
        if (vs->ready)
                ready_set(vs, false, "not running");
        vs->ready_detail = mfree(vs->ready_detail);
        vs->probe_detail = mfree(vs->probe_detail);
}

void vm_services_down(VmServices *vs) {
        services_stop(vs);
        cri_rest(vs);
}

void vm_services_close(VmServices *vs) {
        services_stop(vs);
        vs->cri = proxy_free(vs->cri);
        vs->failure_matcher = line_matcher_free(vs->failure_matcher);
        vs->tail_len = 0;
        vs->console = console_free(vs->console);
}

size_t vm_services_console_tail(const VmServices *vs, char *buf, size_t size) {
        return console_text_clean(vs->tail, vs->tail_len, buf, size);
}

void vm_services_restore_ready(VmServices *vs, uint64_t since_usec) {
        vs->ready = true;
        vs->ready_since_usec = since_usec;
        free(vs->ready_detail);
        vs->ready_detail = strdup("ready before hydrad restarted");
        vs->probe_detail = mfree(vs->probe_detail);
}

bool vm_services_ready(const VmServices *vs, uint64_t *ret_since_usec, const char **ret_detail) {
        if (ret_since_usec)
                *ret_since_usec = vs->ready ? vs->ready_since_usec : 0;
        if (ret_detail)
                *ret_detail = vs->ready_detail;
        return vs->ready;
}

const char *vm_services_console_socket(const VmServices *vs) {
        return vs->console ? vs->cfg.console_sock_path : NULL;
}

const char *vm_services_cri_socket(const VmServices *vs) {
        return vs->cri ? vs->cfg.cri_path : NULL;
}
