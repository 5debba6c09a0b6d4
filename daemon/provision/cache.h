/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"
#include "fetch.h"

/* The download cache as a whole (fetch.h is one download into it): removing what no VM can use. Which URLs are in
 * use is the core's to say (the registered specs); the removals themselves are disk-queue jobs (disk_queue.h:
 * run on its thread, the result read on the loop in the done callback, then freed with the free function).
 *
 * An entry stays, whatever the caller says, while a VM's disk is a qcow2 overlay on a file in it (keep_pristine:
 * a disk kept by reuse_disk_on_change after the image URL changed still leans on the old base). */

/* The VMs' disks, as provision.c names them (STATE_DIR/ROLE/disk.qcow2), one per role but except_role (< 0:
 * none). NULL on ENOMEM. */
char **cache_vm_disks(const char *state_dir, int except_role);

/* The backing file disk's qcow2 header names, a relative name taken from disk's directory. Returns 1 with *ret, 0
 * (none, not a qcow2, no such disk, a name longer than qcow2 allows), or -errno. */
int qcow2_backing_file(const char *disk, char **ret);

/* The entry directory that holds disk's backing file, or NULL (none, not a qcow2 overlay, not in cache_dir).
 * Reads the qcow2 header (docs/interop/qcow2.txt). Returns 1 with *ret, 0, or -errno. */
int cache_disk_backing_entry(const char *cache_dir, const char *disk, char **ret);

/* The blocks a file or a tree takes, in bytes. */
uint64_t cache_tree_size(const char *path);

/* "282 MiB" */
const char *cache_format_size(uint64_t bytes, char buf[static 32]);

/* One entry, removed (disk_queue_call(q, cache_drop_run, d, cache_drop_free, ...)). */
typedef struct CacheDrop {
        char *url;                 /* as given (the caller may try again) */
        char *entry;               /* CACHE/<key> */
        char **disks;              /* cache_vm_disks() */
        Fetcher *fetcher;          /* borrowed: its worker is done with the entry before it goes */
        uint64_t ticket;           /* fetcher_ticket() when queued */
        void *userdata;            /* the caller's */
        /* The job's result: */
        bool found;                /* there was something to remove */
        uint64_t size;             /* bytes freed */
        bool backs_disk;           /* left in place: a VM's disk is an overlay on it */
} CacheDrop;

/* The entry of url under cache_dir, for the removal; disks: cache_vm_disks(state_dir, except_role). Returns 0 or
 * -ENOMEM. */
int cache_drop_new(const char *cache_dir, const char *url, const char *state_dir, int except_role, Fetcher *fr,
                   CacheDrop **ret);
void cache_drop_free(void *d);
/* disk_job_run_t: removes d->entry unless it backs a disk. Returns 0, or -errno with err. */
int cache_drop_run(void *d, HydraError *err);

/* Every entry directly under the cache directory that is not kept (a directory, a file, a partial download),
 * removed (disk_queue_call(q, cache_sweep_run, s, cache_sweep_free, ...)). */
typedef struct CacheSweep {
        char *cache_dir;
        char **keep;               /* entry names (fetch_cache_key() of the URLs in use) */
        char **disks;              /* cache_vm_disks() */
        void *userdata;            /* the caller's */
        /* The job's result: */
        char **removed;            /* entry names */
        uint64_t *sizes;           /* bytes freed, per removed entry */
        size_t n_removed;
        char **failed;             /* "NAME: error" */
} CacheSweep;

/* keep: the URLs in use (NULLs and duplicates allowed), n_keep of them. Returns 0 or -ENOMEM. */
int cache_sweep_new(const char *cache_dir, const char *const *keep, size_t n_keep, const char *state_dir,
                    CacheSweep **ret);
void cache_sweep_free(void *s);
/* disk_job_run_t. Returns 0 (a cache directory that does not exist is empty), or -errno with err when it cannot be
 * read; an entry that cannot be removed goes to failed and the sweep goes on. */
int cache_sweep_run(void *s, HydraError *err);
