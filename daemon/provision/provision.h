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

/* Which steps a preparation runs: the chain's decisions, apart from the I/O that gathers their inputs. The chain
 * learns its facts as it goes (a digest is known once its download is done) and asks at each step with what it
 * knows by then; a fact not known (NULL, false, 0) counts as "not there". With no facts at all, the answer is what
 * a VM with nothing on disk yet would run. */
typedef enum ProvisionStep {
        PROVISION_STEP_FETCH_IMAGE        = 1U << 0,  /* the cloud image (the cache may answer) */
        PROVISION_STEP_UNPACK_IMAGE       = 1U << 1,  /* packed, and not unpacked from this download yet */
        PROVISION_STEP_FETCH_ARTIFACT     = 1U << 2,  /* the bare-kernel artifact */
        PROVISION_STEP_UNPACK_ARTIFACT    = 1U << 3,  /* not unpacked from this download yet */
        PROVISION_STEP_LOCATE             = 1U << 4,  /* the bare kernel and the encrypted-container tools in it */
        PROVISION_STEP_BUILD_SEED         = 1U << 5,  /* the cloud-init ISO: none yet, or its files changed */
        PROVISION_STEP_RESET_DISK         = 1U << 6,  /* remove a disk made from another base or configuration */
        PROVISION_STEP_KEEP_DISK          = 1U << 7,  /* reuse_disk_on_change: keep it, record it anew */
        PROVISION_STEP_MAKE_DISK          = 1U << 8,  /* qemu-img create (keep_pristine: an overlay) or convert */
        PROVISION_STEP_GROW_DISK          = 1U << 9,  /* smaller than disk_size, or its size unknown */
        PROVISION_STEP_COPY_FIRMWARE_VARS = 1U << 10, /* the template, once per VM */
        PROVISION_STEP_SHARES             = 1U << 11, /* make the kubelet dirs, check the extra shares */
        PROVISION_STEP_SHMEM              = 1U << 12, /* the shared-memory backing file */
} ProvisionStep;

typedef struct ProvisionFacts {
        const char *image_digest;           /* sha256 of the downloaded cloud image */
        bool image_packed;                  /* compressed or an archive */
        const char *image_unpacked_from;    /* CACHE/<key>/image.source */
        bool image_unpacked;                /* CACHE/<key>/image exists */
        const char *artifact_digest;        /* sha256 of the downloaded artifact */
        const char *artifact_unpacked_from; /* STATE/artifact.source */
        bool artifact_unpacked;             /* STATE/artifact exists */
        const char *seed_digest;            /* of the cloud-init files as rendered now */
        const char *seed_built_from;        /* STATE/seed.digest */
        bool seed_built;                    /* STATE/seed.iso is a file */
        const char *base_identity;          /* the disk's base: the image digest, or artifact digest:rootfs */
        const char *disk_made_from;         /* STATE/disk.identity */
        bool disk_exists;                   /* STATE/disk.qcow2 is a file */
        uint64_t disk_size;                 /* its virtual size in bytes; 0: not known */
        bool firmware_vars_copied;          /* STATE/firmware-vars.fd is a file */
} ProvisionFacts;

/* Pure. Sets *ret to the ProvisionStep bits of what must run; returns 0 or -ENOMEM. */
int provision_steps(const VmSpec *spec, const ProvisionFacts *facts, unsigned *ret);

/* What a disk is made from (base, seed, keep_pristine), as recorded in STATE/disk.identity: sha256, hex. */
int provision_disk_identity(const char *base_identity, const char *seed_digest, bool keep_pristine,
                            char ret[static 65]);

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
