/* SPDX-License-Identifier: MIT */
#include <stdio.h>

#include "authz.h"

static bool in_group(gid_t want, gid_t gid, const gid_t *groups, size_t n) {
        if (want == (gid_t) -1)
                return false;
        if (gid == want)
                return true;
        for (size_t i = 0; i < n; i++)
                if (groups[i] == want)
                        return true;
        return false;
}

ApiAccess authz_access(const AuthzPolicy *p, uid_t uid, gid_t gid, const gid_t *groups, size_t n) {
        if (uid == 0 || uid == p->daemon_uid || in_group(p->full_gid, gid, groups, n))
                return API_ACCESS_FULL;
        if (in_group(p->read_gid, gid, groups, n))
                return API_ACCESS_READ;
        return API_ACCESS_NONE;
}

void authz_denied_message(const AuthzPolicy *p, const char *method, bool mutating, ApiAccess a, uid_t uid,
                          char *buf, size_t size) {
        const char *what = mutating ? "changes VMs and needs" : "needs";
        char who[160];

        if (a == API_ACCESS_READ && p->read_group)
                (void) snprintf(who, sizeof(who), "you are uid %u, with read-only access through group '%s'",
                                (unsigned) uid, p->read_group);
        else
                (void) snprintf(who, sizeof(who), "you are uid %u", (unsigned) uid);

        if (!p->full_group)
                (void) snprintf(buf, size,
                                "permission denied: %s %s root or hydrad's own user (uid %u); no socket_group is "
                                "configured in hydrad.conf (%s)", method, what, (unsigned) p->daemon_uid, who);
        else if (mutating || !p->read_group)
                (void) snprintf(buf, size, "permission denied: %s %s root or membership of group '%s' (%s)", method,
                                what, p->full_group, who);
        else
                (void) snprintf(buf, size, "permission denied: %s %s root or membership of group '%s' or '%s' (%s)",
                                method, what, p->full_group, p->read_group, who);
}
