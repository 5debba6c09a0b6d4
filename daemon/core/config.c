/* SPDX-License-Identifier: MIT */
#include <grp.h>
#include <pwd.h>
#include <ini.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "log.h"

static const char *const on_exit_table[_ON_EXIT_MAX] = {
        [ON_EXIT_LEAVE] = "leave",
        [ON_EXIT_STOP] = "stop",
};
DEFINE_STRING_TABLE_LOOKUP(on_exit, OnExit, _ON_EXIT_MAX);

/* --- machined (issue 13) --- */
static const char *const machined_mode_table[_MACHINED_MODE_MAX] = {
        [MACHINED_AUTO] = "auto",
        [MACHINED_YES] = "yes",
        [MACHINED_NO] = "no",
};
DEFINE_STRING_TABLE_LOOKUP(machined_mode, MachinedMode, _MACHINED_MODE_MAX);

static int set_machined(HydraConfig *c, const char *value, HydraError *err) {
        MachinedMode m = machined_mode_from_string(value);

        if (m < 0)
                return hydra_error_set(err, -EINVAL, "machined: '%s' is not allowed (allowed: auto, yes, no)", value);
        c->machined = m;
        return 0;
}
/* --- end machined --- */

void config_init(HydraConfig *c) {
        *c = (HydraConfig) {
                .log_level = LOG_INFO,
                .on_exit = ON_EXIT_LEAVE,
                .stop_timeout_usec = 60ULL * 1000000ULL,
                .qmp_timeout_usec = 5ULL * 1000000ULL,
                .api_max_connections = 128,
                .api_idle_timeout_usec = 300ULL * 1000000ULL,
                .socket_gid = (gid_t) -1,
                .readonly_gid = (gid_t) -1,
                .socket_mode = 0660,
                .qemu_uid = (uid_t) -1,
                .qemu_gid = (gid_t) -1,
        };
}

void config_done(HydraConfig *c) {
        free(c->state_dir);
        free(c->run_dir);
        free(c->socket_path);
        free(c->socket_group);
        free(c->readonly_group);
        free(c->qemu_x86_64);
        free(c->qemu_aarch64);
        free(c->qemu_user);
        free(c->qemu_groups);
        config_init(c);
}

static int set_string(char **field, const char *value) {
        char *s = strdup(value);
        if (!s)
                return -ENOMEM;
        free(*field);
        *field = s;
        return 0;
}

static int set_abs_path(char **field, const char *key, const char *value, HydraError *err) {
        if (value[0] != '/')
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not an absolute path", key, value);
        return set_string(field, value);
}

static int set_seconds(uint64_t *field, const char *key, const char *value, HydraError *err) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(value, &end, 10);
        if (errno != 0 || end == value || *end || v == 0 || v > 86400)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a number of seconds (allowed: 1-86400)",
                                       key, value);
        *field = v * 1000000ULL;
        return 0;
}

static int set_unsigned(unsigned *field, const char *key, const char *value, unsigned max, HydraError *err) {
        char *end;
        unsigned long v;

        errno = 0;
        v = strtoul(value, &end, 10);
        if (errno != 0 || end == value || *end || value[0] == '-' || v == 0 || v > max)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is not a number (allowed: 1-%u)", key, value, max);
        *field = (unsigned) v;
        return 0;
}

int config_set(HydraConfig *c, const char *key, const char *value, HydraError *err) {
        int r;

        if (streq(key, "state_dir"))
                return set_abs_path(&c->state_dir, key, value, err);
        if (streq(key, "run_dir"))
                return set_abs_path(&c->run_dir, key, value, err);
        if (streq(key, "socket"))
                return set_abs_path(&c->socket_path, key, value, err);
        if (streq(key, "qemu_x86_64"))
                return set_abs_path(&c->qemu_x86_64, key, value, err);
        if (streq(key, "qemu_aarch64"))
                return set_abs_path(&c->qemu_aarch64, key, value, err);
        if (streq(key, "socket_group"))
                return set_string(&c->socket_group, value);
        if (streq(key, "readonly_group"))
                return set_string(&c->readonly_group, value);
        if (streq(key, "qemu_user"))
                return set_string(&c->qemu_user, value);
        if (streq(key, "socket_mode")) {
                char *end;
                unsigned long v;

                /* Octal, as chmod takes it; read and write for the owner at least, and nothing beyond rw. */
                errno = 0;
                v = strtoul(value, &end, 8);
                if (errno != 0 || end == value || *end || value[0] == '-' || (v & ~0666UL) != 0 ||
                    (v & 0600) != 0600)
                        return hydra_error_set(err, -EINVAL,
                                               "socket_mode: '%s' is not allowed (an octal mode of read and write "
                                               "bits with 0600 set, e.g. 0660 or 0666)", value);
                c->socket_mode = (mode_t) v;
                return 0;
        }
        if (streq(key, "stop_timeout"))
                return set_seconds(&c->stop_timeout_usec, key, value, err);
        if (streq(key, "qmp_timeout"))
                return set_seconds(&c->qmp_timeout_usec, key, value, err);
        if (streq(key, "api_max_connections"))
                return set_unsigned(&c->api_max_connections, key, value, 65536, err);
        if (streq(key, "api_idle_timeout"))
                return set_seconds(&c->api_idle_timeout_usec, key, value, err);
        if (streq(key, "machined"))
                return set_machined(c, value, err);
        if (streq(key, "log_level")) {
                r = log_level_from_string(value);
                if (r < 0)
                        return hydra_error_set(err, -EINVAL,
                                               "log_level: '%s' is not a level (allowed: error, warning, info, debug)",
                                               value);
                c->log_level = r;
                return 0;
        }
        if (streq(key, "on_exit")) {
                OnExit o = on_exit_from_string(value);
                if (o < 0)
                        return hydra_error_set(err, -EINVAL, "on_exit: '%s' is not allowed (allowed: leave, stop)",
                                               value);
                c->on_exit = o;
                return 0;
        }
        return hydra_error_set(err, -EINVAL, "unknown setting '%s'", key);
}

typedef struct ParseState {
        HydraConfig *config;
        HydraError *err;
        int r;
} ParseState;

static int on_ini_value(void *userdata, const char *section, const char *name, const char *value) {
        ParseState *s = userdata;

        if (!streq(section, "hydrad")) {
                s->r = hydra_error_set(s->err, -EINVAL, "unknown section [%s] (allowed: [hydrad])", section);
                return 0;
        }
        s->r = config_set(s->config, name, value, s->err);
        return s->r >= 0;
}

int config_load_file(HydraConfig *c, const char *path, HydraError *err) {
        ParseState s = { .config = c, .err = err };
        FILE *f;
        int line;

        f = fopen(path, "re");
        if (!f)
                return hydra_error_set(err, -errno, "open config '%s': %s", path, strerror(errno));
        line = ini_parse_file(f, on_ini_value, &s);
        fclose(f);
        if (line != 0) {
                if (s.r < 0)
                        return hydra_error_prefix(err, "%s:%d: ", path, line);
                return hydra_error_set(err, -EINVAL, "%s:%d: syntax error", path, line);
        }
        return 0;
}

static int resolve_group(const char *key, const char *name, gid_t *ret, HydraError *err) {
        struct group *g;

        errno = 0;
        g = getgrnam(name);
        if (!g) {
                if (errno != 0 && errno != ENOENT && errno != ESRCH && errno != EBADF && errno != EPERM)
                        return hydra_error_set(err, -errno, "%s: cannot look up group '%s': %s", key, name,
                                               strerror(errno));
                return hydra_error_set(err, -ENOENT, "%s: group '%s' does not exist%s", key, name,
                                       streq(name, "hydra") ? " (the package's sysusers.d/hydra.conf makes it: "
                                                              "systemd-sysusers, or groupadd --system hydra)" : "");
        }
        *ret = g->gr_gid;
        return 0;
}

static int resolve_qemu_user(HydraConfig *c, HydraError *err) {
        _cleanup_free_ gid_t *groups = NULL;
        struct passwd *pw;
        int n = 16;

        errno = 0;
        pw = getpwnam(c->qemu_user);
        if (!pw) {
                if (errno != 0 && errno != ENOENT && errno != ESRCH && errno != EBADF && errno != EPERM)
                        return hydra_error_set(err, -errno, "qemu_user: cannot look up user '%s': %s", c->qemu_user,
                                               strerror(errno));
                return hydra_error_set(err, -ENOENT, "qemu_user: user '%s' does not exist%s", c->qemu_user,
                                       streq(c->qemu_user, "hydra-qemu")
                                               ? " (the package's sysusers.d/hydra.conf makes it: systemd-sysusers, "
                                                 "or useradd --system --no-create-home --groups kvm hydra-qemu)"
                                               : "");
        }
        if (geteuid() != 0 && pw->pw_uid != geteuid())
                return hydra_error_set(err, -EPERM, "qemu_user: hydrad runs as uid %u, not root, so it cannot run QEMU "
                                       "as '%s' (uid %u): run hydrad as root or leave qemu_user out",
                                       (unsigned) geteuid(), c->qemu_user, (unsigned) pw->pw_uid);
        if (pw->pw_uid == 0)
                return hydra_error_set(err, -EINVAL, "qemu_user: '%s' is root; name an unprivileged user, or leave "
                                       "qemu_user out to run QEMU as hydrad's user", c->qemu_user);
        for (;;) {
                gid_t *g = reallocarray(groups, (size_t) n, sizeof(gid_t));
                int want = n;

                if (!g)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                groups = g;
                if (getgrouplist(pw->pw_name, pw->pw_gid, groups, &want) >= 0) {
                        n = want;
                        break;
                }
                if (want <= n) /* it failed without saying how many it needs */
                        return hydra_error_set(err, -EIO, "qemu_user: cannot read the groups of '%s'", c->qemu_user);
                n = want;
        }
        free(c->qemu_groups);
        c->qemu_groups = TAKE_PTR(groups);
        c->n_qemu_groups = (size_t) n;
        c->qemu_uid = pw->pw_uid;
        c->qemu_gid = pw->pw_gid;
        return 0;
}

int config_finish(HydraConfig *c, HydraError *err) {
        int r;

        if (!c->state_dir && set_string(&c->state_dir, "/var/lib/hydra") < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (!c->run_dir && set_string(&c->run_dir, "/run/hydra") < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (!c->socket_path && asprintf(&c->socket_path, "%s/hydra.sock", c->run_dir) < 0) {
                c->socket_path = NULL;
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        c->socket_gid = (gid_t) -1;
        if (c->socket_group) {
                r = resolve_group("socket_group", c->socket_group, &c->socket_gid, err);
                if (r < 0)
                        return r;
        }
        c->readonly_gid = (gid_t) -1;
        if (c->readonly_group) {
                r = resolve_group("readonly_group", c->readonly_group, &c->readonly_gid, err);
                if (r < 0)
                        return r;
        }
        c->qemu_uid = (uid_t) -1;
        c->qemu_gid = (gid_t) -1;
        c->n_qemu_groups = 0;
        if (c->qemu_user) {
                r = resolve_qemu_user(c, err);
                if (r < 0)
                        return r;
        }
        return 0;
}
