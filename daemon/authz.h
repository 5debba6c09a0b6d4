/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Who may call what on the API socket, decided per call from the peer's credentials (SO_PEERCRED and
 * SO_PEERGROUPS, taken when the connection is accepted). The socket's mode and group are the first gate (0660
 * root:socket_group by default); this is the rule:
 *
 *  - RPCs that change VMs (RegisterVm, StartVm, StopVm, DestroyVm): root, hydrad's own user, and members of
 *    socket_group;
 *  - read-only RPCs (GetVm, ListVms, WatchEvents, PlanVm, ConsoleLog, Health): those, and members of
 *    readonly_group;
 *  - everyone else: PERMISSION_DENIED, naming the group needed.
 *
 * Pure: no NSS (the groups are resolved once at start-up, config_finish), no sockets. */

typedef enum ApiAccess {
        API_ACCESS_NONE,
        API_ACCESS_READ,
        API_ACCESS_FULL,
} ApiAccess;

typedef struct AuthzPolicy {
        uid_t daemon_uid;
        gid_t full_gid;           /* socket_group's; (gid_t) -1: none configured */
        gid_t read_gid;           /* readonly_group's; (gid_t) -1: none */
        const char *full_group;   /* names, for messages; NULL with the gid -1 */
        const char *read_group;
} AuthzPolicy;

/* groups: the peer's supplementary groups (SO_PEERGROUPS), n of them; gid: its primary group. */
ApiAccess authz_access(const AuthzPolicy *p, uid_t uid, gid_t gid, const gid_t *groups, size_t n);

static inline bool authz_allows(ApiAccess a, bool mutating) {
        return a == API_ACCESS_FULL || (a == API_ACCESS_READ && !mutating);
}

/* The PERMISSION_DENIED message for a call of method (its short name, "StartVm") that authz_allows() refused:
 * what the call needed, naming the group(s), and who the caller is. */
void authz_denied_message(const AuthzPolicy *p, const char *method, bool mutating, ApiAccess a, uid_t uid,
                          char *buf, size_t size);
