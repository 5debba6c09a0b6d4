/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"
#include "macro.h"

/* The serial console relay of one VM, on the loop. QEMU listens on its chardev socket (server=on,wait=off); we
 * connect as its one client. Everything the guest prints goes to console.log (rotated), to on_data and to every
 * client attached to console.sock; what clients type goes to the guest.
 *
 * Nothing here blocks or grows without bound: each attached client has a CONSOLE_CLIENT_BUFFER_MAX output buffer
 * and is disconnected when it fills (a client that does not read cannot stall the relay); input for QEMU is held
 * up to CONSOLE_INPUT_BUFFER_MAX and the excess dropped; at most CONSOLE_CLIENTS_MAX clients are attached, the
 * next ones get a one-line refusal. Log writes are plain write(2)s of small chunks. */

typedef struct Console Console;

#define CONSOLE_CLIENTS_MAX 16U
#define CONSOLE_CLIENT_BUFFER_MAX (64U * 1024U)
#define CONSOLE_INPUT_BUFFER_MAX (64U * 1024U)
#define CONSOLE_LOG_MAX_BYTES_DEFAULT (1024U * 1024U)
#define CONSOLE_LOG_KEEP_DEFAULT 2U

typedef struct ConsoleConfig {
        const char *log_path;    /* STATE/ROLE/console.log: everything the guest printed; NULL: no log */
        uint64_t log_max_bytes;  /* console.log never grows past this (0: CONSOLE_LOG_MAX_BYTES_DEFAULT) */
        unsigned log_keep;       /* rotated files kept: console.log.1 .. console.log.N (0: CONSOLE_LOG_KEEP_DEFAULT) */
        const char *listen_path; /* RUN/ROLE/console.sock: people attach here (hydractl console); NULL: none */
        mode_t listen_mode;      /* 0660 (also what 0 means) */
        gid_t listen_gid;        /* (gid_t) -1: leave the group */
        /* Every byte from the guest, in order (e.g. for a readiness pattern); may be NULL. data is valid during
         * the call. The callback may call console_disconnect() or console_free(). */
        void (*on_data)(Console *c, const void *data, size_t size, void *userdata);
        void *userdata;
} ConsoleConfig;

/* Opens the log (O_APPEND, 0640, no symlinks, a regular file only: rotation renames it), binds and listens on
 * listen_path (a stale socket there is removed first), copies the strings. Not connected to QEMU yet. Returns 0,
 * or a negative errno with err naming the path. */
int console_new(sd_event *e, const ConsoleConfig *cfg, Console **ret, HydraError *err);

/* Connects to QEMU's chardev socket (a unix socket connect does not wait: it succeeds or fails at once). An
 * existing QEMU connection is dropped first. Returns 0, or a negative errno with err naming the path. */
int console_connect(Console *c, const char *qemu_socket_path, HydraError *err);

/* QEMU is gone: drops the QEMU side and the input queued for it. Attached clients stay attached and see nothing
 * until the next console_connect(); what they type meanwhile is discarded. Accepts NULL. */
void console_disconnect(Console *c);

/* Closes everything (attached clients see EOF) and removes console.sock. Accepts NULL; returns NULL. */
Console *console_free(Console *c);
DEFINE_TRIVIAL_CLEANUP_FUNC(Console *, console_free);

bool console_is_connected(const Console *c);
unsigned console_get_n_clients(const Console *c);

/* The stored log, for a reader (ConsoleLog). console_log_snapshot() opens console.log.KEEP ... console.log
 * (oldest first) and notes their sizes: on the loop, in the same iteration as the reader subscribes to what
 * follows, so that no byte falls between the two and none comes twice. It holds the files open: a rotation
 * meanwhile does not disturb it. Reading it can be slow (KEEP + 1 files of log_max_bytes): do it off the loop,
 * from one thread at a time. */
typedef struct ConsoleLogSnapshot ConsoleLogSnapshot;

/* Keeps the last tail_bytes (0: all), and never more than the last max_bytes (0: no limit). A missing file, or one
 * that is not a regular file, counts as empty. Opening never blocks on a FIFO. Returns 0 or -ENOMEM. */
int console_log_snapshot(const char *log_path, unsigned keep, uint64_t tail_bytes, uint64_t max_bytes,
                         ConsoleLogSnapshot **ret);
/* The bytes the snapshot will deliver, at most. */
uint64_t console_log_snapshot_size(const ConsoleLogSnapshot *s);
/* Reads the next bytes, at most size and never across two files. Returns the count, or 0 at the end. A file that
 * fails to read, or shrank (truncated), ends early: what it held is gone. */
size_t console_log_snapshot_read(ConsoleLogSnapshot *s, void *buf, size_t size);
ConsoleLogSnapshot *console_log_snapshot_free(ConsoleLogSnapshot *s);
DEFINE_TRIVIAL_CLEANUP_FUNC(ConsoleLogSnapshot *, console_log_snapshot_free);
