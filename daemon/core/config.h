/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "error.h"

/* Daemon settings: /etc/hydra/hydrad.conf (INI, section [hydrad]), then command-line flags on top. */

typedef enum OnExit {
        ON_EXIT_LEAVE,  /* VMs keep running when hydrad exits (a restarted hydrad re-adopts them) */
        ON_EXIT_STOP,   /* VMs are stopped gracefully before hydrad exits */
        _ON_EXIT_MAX,
        _ON_EXIT_INVALID = -EINVAL,
} OnExit;

/* --- machined (issue 13): each QEMU in a scope of its own, registered with systemd-machined (machine.h) --- */
typedef enum MachinedMode {
        MACHINED_AUTO,  /* iff systemd is PID 1 (sd_booted) and the system bus answers */
        MACHINED_YES,   /* always try (the tests point $DBUS_SYSTEM_BUS_ADDRESS at a private bus) */
        MACHINED_NO,    /* never: QEMU stays hydrad's child, in hydrad's cgroup */
        _MACHINED_MODE_MAX,
        _MACHINED_MODE_INVALID = -EINVAL,
} MachinedMode;

const char *machined_mode_to_string(MachinedMode m);
MachinedMode machined_mode_from_string(const char *s);
/* --- end machined --- */

typedef struct HydraConfig {
        char *state_dir;            /* default /var/lib/hydra */
        char *run_dir;              /* default /run/hydra */
        char *socket_path;          /* default RUN_DIR/hydra.sock */
        char *socket_group;         /* group owning the API socket (mode 0660); NULL: the daemon's */
        gid_t socket_gid;           /* socket_group's, resolved once by config_finish; (gid_t) -1: none */
        char *readonly_group;       /* members may call the read-only RPCs (daemon/authz.h); NULL: none */
        gid_t readonly_gid;         /* resolved like socket_gid */
        mode_t socket_mode;         /* of the API socket hydrad binds (not one systemd passes); default 0660 */
        int log_level;              /* syslog level */
        OnExit on_exit;
        uint64_t stop_timeout_usec; /* graceful stop default (StopVm timeout 0, on-exit=stop) */
        uint64_t qmp_timeout_usec;  /* per QMP command */
        unsigned api_max_connections; /* API connections open at once; more are closed at once (default 128) */
        uint64_t api_idle_timeout_usec; /* an API connection without calls for this long is closed (default 5 min) */
        char *qemu_x86_64;          /* QEMU binaries; default found on $PATH */
        char *qemu_aarch64;
        MachinedMode machined;      /* machined = auto|yes|no (default auto) */
        char *qemu_user;            /* QEMU runs as this user where the spec allows (vm_qemu_user()); NULL: as hydrad */
        uid_t qemu_uid;             /* qemu_user's, resolved once by config_finish; (uid_t) -1: none */
        gid_t qemu_gid;             /* its primary group */
        gid_t *qemu_groups;         /* its supplementary groups (the group database's, with qemu_gid) */
        size_t n_qemu_groups;
} HydraConfig;

const char *on_exit_to_string(OnExit o);
OnExit on_exit_from_string(const char *s);

void config_init(HydraConfig *c);   /* defaults */
void config_done(HydraConfig *c);

/* Reads an INI file over the current values. Unknown keys are errors naming file:line. */
int config_load_file(HydraConfig *c, const char *path, HydraError *err);

/* Sets one key ("state_dir", "log_level", ...) from a string, as the file and the flags do. */
int config_set(HydraConfig *c, const char *key, const char *value, HydraError *err);

/* Fills what depends on other values (socket_path from run_dir) and resolves socket_group to socket_gid and qemu_user
 * to its ids, once: NSS may block (LDAP, sssd), so the loop never asks it. An unknown group or user is an error (err
 * names it), and so is a qemu_user other than hydrad's own when hydrad is not root (it could not switch to it). */
int config_finish(HydraConfig *c, HydraError *err);
