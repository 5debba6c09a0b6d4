/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/provision: what a VM needs before QEMU can start: the preparation chain (this file), downloads into the
 * cache (fetch.h: curl glue; fetch_sink.h: its disk side; fetch_meta.h: pure helpers), unpacking (unpack.h) and the
 * cloud-init seed (cloudinit.h). It sees base/ only, and knows no Vm: the core hands it a spec and hears back
 * through callbacks. */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "cloudinit.h"
#include "error.h"
#include "fetch.h"
#include "spec.h"

/* Everything start-vm.sh does before it execs QEMU, as a chain of asynchronous steps on the loop: fetch the
 * cloud image or the bare-kernel artifact (fetch.c), unpack it (unpack.c, on a worker thread), render the
 * cloud-init seed (cloudinit.c, on a worker thread) and build its ISO (genisoimage, a child), make the VM's disk
 * from the base (qemu-img create/convert, a child), grow it (qemu-img info + resize), copy the firmware variable
 * store, size the shared-memory file. The fsync'd records below are written on a worker thread too, each durable
 * before the step that follows it starts. One step runs at a time; provision_cancel() stops the one in flight.
 *
 * Files, per VM (STATE = the VM's state dir):
 *     STATE/disk.qcow2 + disk.identity   the VM's disk, and what it was made from (base + guest configuration)
 *     STATE/cloud-init/                  user-data, meta-data, network-config, vendor-data (mode 0600)
 *     STATE/seed.iso                     NoCloud seed, volume id cidata, Joliet + Rock Ridge
 *     STATE/artifact/ + artifact.source  the unpacked bare-kernel artifact, and the digest it came from
 *     STATE/firmware-vars.fd             the VM's own copy of the firmware variable store
 * and in CACHE (shared by both VMs): CACHE/<key>/{data,meta.json} (fetch.c), image + image.source (unpacked). */

typedef struct Provision Provision;

typedef struct ProvisionOutput {
        char *disk_path;           /* NULL: QEMU gets spec->disk (local) or no disk */
        const char *disk_format;   /* static string: "qcow2" or "raw" */
        char *seed_path;
        char *kernel;              /* bare kernel: from the artifact; else NULL (spec->kernel is used) */
        char *initrd;
        bool bare_kernel;
        char *firmware_vars;
        char *shmem_path;
} ProvisionOutput;

void provision_output_done(ProvisionOutput *o);

typedef struct ProvisionProgress {
        const char *step;          /* "download", "unpack", "seed", "disk" */
        const char *what;          /* a URL without credentials, or a path */
        uint64_t bytes, total, rate;
} ProvisionProgress;

typedef struct ProvisionCallbacks {
        void (*progress)(const ProvisionProgress *p, void *userdata);
        void (*notice)(const char *message, void *userdata);
        /* Called once. On success out is filled and owned by the callee. The Provision is freed after. */
        void (*done)(int r, const HydraError *err, ProvisionOutput *out, void *userdata);
} ProvisionCallbacks;

typedef struct ProvisionContext {
        sd_event *event;
        Fetcher *fetcher;
        const char *name;          /* "host" / "isolated", for messages */
        const char *state_dir;     /* the VM's own: STATE_DIR/ROLE */
        const char *cache_dir;     /* STATE_DIR/cache */
} ProvisionContext;

/* Takes a copy of spec (defaults applied, validated). Returns 0 (pending: done will be called unless
 * cancelled) or a negative errno with err set. */
int provision_start(const ProvisionContext *ctx, const VmSpec *spec, const ProvisionCallbacks *cb, void *userdata,
                    Provision **ret, HydraError *err);

/* Stops the step in flight (download, unpack or child) and removes its partial output. No callback. */
void provision_cancel(Provision *p);

/* PlanVm: what provision_start would produce, without doing anything: the paths QEMU would get and the
 * rendered cloud-init files (files->* NULL when the VM has no seed). Synchronous and cheap. */
int provision_plan(const ProvisionContext *ctx, const VmSpec *spec, ProvisionOutput *out, CloudInitFiles *files,
                   HydraError *err);

/* Where the bare kernel, initrd and rootfs are in the unpacked artifact. must_exist: each must be a regular
 * file, else -ENOENT with err saying which paths were tried; otherwise the paths where they would be. */
int provision_locate_bare(const VmSpec *spec, const char *artifact_dir, bool must_exist, char **ret_kernel,
                          char **ret_initrd, char **ret_rootfs, HydraError *err);

/* The shared-memory backing file of a spec with devices.shmem set: prepared for QEMU, its path in ret_path.
 * ret_grown_to: the size it was grown to, 0 if it was left as it was. */
int provision_shmem(const char *state_dir, const char *name, const VmSpec *spec, char **ret_path, uint64_t *ret_grown_to,
                    HydraError *err);

/* "amd64" / "arm64": Debian's name for the arch (csi-grpc-proxy's download suffix). */
const char *provision_debian_arch(Arch arch);
