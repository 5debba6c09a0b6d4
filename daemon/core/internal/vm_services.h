/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "console.h"
#include "error.h"
#include "probe.h"
#include "proxy.h"
#include "spec.h"

/* What hydrad provides around a running QEMU: the serial console relay, the readiness probe, and for the isolated
 * VM the CRI socket (bound while the spec has containerd's forward, forwarding while the guest runs). An object of its own, owned by its Vm, which drives it (a new boot, the guest runs, the guest
 * stopped) and hears back through VmServicesCallbacks, as qmp.c reports to its owner. It reads the spec it was
 * given (the Vm's, which outlives it) at each step. Everything on the loop. */

typedef struct VmServices VmServices;

typedef struct VmServicesCallbacks {
        /* The readiness changed (vm_services_ready() tells the details). */
        void (*ready_changed)(VmServices *s, bool ready, void *userdata);
        /* Bytes the guest printed on its serial console. */
        void (*console_data)(VmServices *s, const void *data, size_t size, void *userdata);
} VmServicesCallbacks;

typedef struct VmServicesConfig {
        sd_event *event;
        const char *name;              /* the VM's, for logs */
        bool cri;                      /* offer the CRI socket (the isolated VM) */
        const VmSpec *spec;            /* borrowed: the VM's current spec */
        const char *console_log_path;  /* STATE_DIR/ROLE/console.log */
        const char *console_sock_path; /* RUN_DIR/ROLE/console.sock */
        const char *run_dir;           /* RUN_DIR/ROLE: made for the CRI socket if need be */
        const char *cri_path;          /* RUN_DIR/isolated/containerd.sock */
        gid_t socket_gid;              /* group of the sockets people use; (gid_t) -1: unchanged */
} VmServicesConfig;

int vm_services_new(const VmServicesConfig *cfg, const VmServicesCallbacks *cb, void *userdata, VmServices **ret);
VmServices *vm_services_free(VmServices *s);  /* no callback follows */

/* containerd probes need gRPC, which lives outside the core; NULL: they never pass. */
void vm_services_set_grpc_prober(VmServices *s, const GrpcProber *prober);

/* Creates the console relay (console.log, console.sock) if there is none yet; it lives until
 * vm_services_close(), so a person attached sees a crash and the restart that follows. */
int vm_services_console_open(VmServices *s, HydraError *err);
Console *vm_services_console(VmServices *s);   /* NULL until opened */

/* A new guest boot is about to run (a new QEMU, or a guest reset): not ready, the probe starts over. */
void vm_services_ready_begin(VmServices *s);

/* The guest runs (state running): periodic TCP / containerd probes; the CRI socket forwards to the guest. */
void vm_services_up(VmServices *s);

/* The guest no longer runs (stopping, or QEMU gone): probes stop, not ready, the CRI socket forwards no more (its
 * connections close; new ones go to the fallback). The console stays connected while QEMU lives, so a shutdown is
 * in the log. */
void vm_services_down(VmServices *s);

/* Everything above, the CRI socket and the console relay itself (the VM is destroyed). */
void vm_services_close(VmServices *s);

/* The spec was loaded or replaced: while the guest is down, the CRI socket is bound if the spec has the TCP
 * forward to the guest's containerd port, else removed (the directory of cri_path must exist). */
void vm_services_spec_changed(VmServices *s);

/* Who answers the CRI socket while the guest is down (gRPC lives outside the core). Borrowed; NULL: nobody (a
 * connection is closed at once). */
void vm_services_set_cri_fallback(VmServices *s, const ProxyFallback *fallback);

/* An adopted QEMU whose guest was ready under the previous hydrad. */
void vm_services_restore_ready(VmServices *s, uint64_t since_usec);

/* The last lines this QEMU printed on its console (kept in memory as they passed: no file is read), cleaned by
 * console_text_clean() into buf: at most size - 1 bytes. Returns the length. */
size_t vm_services_console_tail(const VmServices *s, char *buf, size_t size);

/* Ready or not, since when (CLOCK_REALTIME), and the probe's last word (may be NULL); while not ready, followed by
 * the last systemd failure line the guest printed: "... (guest console: [FAILED] Failed to start x.service)". */
bool vm_services_ready(const VmServices *s, uint64_t *ret_since_usec, const char **ret_detail);
const char *vm_services_console_socket(const VmServices *s);   /* NULL while there is no relay */
const char *vm_services_cri_socket(const VmServices *s);       /* NULL while there is no CRI socket (bound) */
