/* SPDX-License-Identifier: MIT */
/* QEMU's scope and machined registration over sd-bus (machine.h says why CreateMachine). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>

#include "machine.h"
#include "macro.h"

/* machined replies once systemd has run the scope's job: a loaded system takes a while. */
#define CREATE_MACHINE_TIMEOUT_USEC (30ULL * 1000000ULL)
/* A name machined still holds from the QEMU that just exited: asked again this often, this many times. */
#define MACHINE_EXISTS_RETRY_USEC (300ULL * 1000ULL)
#define MACHINE_EXISTS_RETRIES 10U

struct Machined {
        sd_event *event;
        sd_bus *bus;              /* NULL or closed: connected again at the next registration */
        HydraError bus_error;     /* why there is no bus (code 0: there is one) */
        MachineJob *jobs;
};

struct MachineJob {
        Machined *machined;
        char *name;
        pid_t pid;
        MachineProperties props;
        unsigned attempts;
        sd_bus_slot *slot;        /* the call in flight */
        sd_event_source *retry;   /* the next attempt, after MachineExists */
        machine_done_t done;
        void *userdata;
        MachineJob *next, *prev;
};

uint64_t machine_cpu_quota_usec(uint32_t percent) {
        /* systemd's CPUQuota=: the percentage of one CPU's time per second, 100% = USEC_PER_SEC. */
        return (uint64_t) percent * 10000ULL;
}

char *machine_scope_name(const char *name) {
        size_t n = strlen(name);
        char *s, *p;

        s = malloc(strlen("machine-") + 4 * n + strlen(".scope") + 1);
        if (!s)
                return NULL;
        p = stpcpy(s, "machine-");
        /* systemd's unit_name_escape(): [A-Za-z0-9:_.] stay (a leading '.' does not), '/' becomes '-', anything
         * else \xNN. */
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char) name[i];

                if (c == '/')
                        *p++ = '-';
                else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ':' ||
                         c == '_' || (c == '.' && i > 0))
                        *p++ = (char) c;
                else
                        p += sprintf(p, "\\x%02x", c);
        }
        strcpy(p, ".scope");
        return s;
}

bool machine_cgroup_has_scope(const char *line, const char *scope) {
        size_t n = strlen(scope);
        const char *p = line;

        /* "0::/machine.slice/machine-hydra\x2dhost.scope" (or "1:name=systemd:..." on a legacy hierarchy): the
         * unit is a whole component, the last or the one before a sub-cgroup the payload made itself. */
        if (!strstr(line, "::/") && !strstr(line, ":name=systemd:/"))
                return false;
        while ((p = strstr(p, scope))) {
                if (p > line && p[-1] == '/' && (p[n] == '\n' || p[n] == '/' || p[n] == '\0'))
                        return true;
                p += n;
        }
        return false;
}

int machine_pid_in_scope(pid_t pid, const char *scope) {
        _cleanup_free_ char *line = NULL;
        char path[64];
        size_t size = 0;
        bool found = false;
        FILE *f;

        (void) snprintf(path, sizeof(path), "/proc/%d/cgroup", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (!found && getline(&line, &size, f) > 0)
                found = machine_cgroup_has_scope(line, scope);
        fclose(f);
        return found;
}

static int machined_connect(Machined *m) {
        _cleanup_(sd_bus_close_unrefp) sd_bus *bus = NULL;
        const char *address;
        int r;

        if (m->bus && sd_bus_is_open(m->bus) > 0)
                return 0;
        m->bus = sd_bus_close_unref(m->bus);
        hydra_error_clear(&m->bus_error);

        address = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        /* A connect to a unix socket (or ENOENT/ECONNREFUSED at once); authentication and Hello go on the loop. */
        r = sd_bus_open_system_with_description(&bus, "hydrad-machined");
        if (r < 0)
                return hydra_error_set(&m->bus_error, r, "cannot connect to the system bus (%s): %s",
                                       address ? address : "the default socket", strerror(-r));
        r = sd_bus_attach_event(bus, m->event, SD_EVENT_PRIORITY_NORMAL);
        if (r < 0)
                return hydra_error_set(&m->bus_error, r, "cannot attach the system bus to the loop: %s", strerror(-r));
        m->bus = TAKE_PTR(bus);
        return 0;
}

int machined_new(sd_event *e, MachinedMode mode, Machined **ret, HydraError *why) {
        return machined_new_full(e, mode, -1, ret, why);
}

int machined_new_full(sd_event *e, MachinedMode mode, int booted, Machined **ret, HydraError *why) {
        Machined *m;
        int r;

        hydra_error_clear(why);
        *ret = NULL;
        if (mode == MACHINED_NO) {
                (void) hydra_error_set(why, -EOPNOTSUPP, "machined = no");
                return 0;
        }
        if (mode == MACHINED_AUTO && (booted < 0 ? sd_booted() : booted) <= 0) {
                (void) hydra_error_set(why, -EOPNOTSUPP, "systemd is not PID 1");
                return 0;
        }

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->event = sd_event_ref(e);
        r = machined_connect(m);
        if (r < 0) {
                *why = m->bus_error;
                if (mode == MACHINED_AUTO) {
                        machined_free(m);
                        return 0;
                }
        }
        *ret = m;
        return 1;
}

Machined *machined_free(Machined *m) {
        if (!m)
                return NULL;
        while (m->jobs)
                machine_job_free(m->jobs);
        m->bus = sd_bus_close_unref(m->bus);
        sd_event_unref(m->event);
        free(m);
        return NULL;
}

MachineJob *machine_job_free(MachineJob *j) {
        if (!j)
                return NULL;
        if (j->machined) {
                if (j->prev)
                        j->prev->next = j->next;
                else
                        j->machined->jobs = j->next;
                if (j->next)
                        j->next->prev = j->prev;
        }
        j->slot = sd_bus_slot_unref(j->slot);
        j->retry = sd_event_source_disable_unref(j->retry);
        free(j->name);
        free(j);
        return NULL;
}

static void job_done(MachineJob *j, int r, const char *path, const HydraError *err) {
        machine_done_t done = j->done;

        /* Once: the caller may free the job from the callback. */
        j->done = NULL;
        if (done)
                done(j, r, path, err, j->userdata);
}

static int job_send(MachineJob *j, HydraError *err);

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        MachineJob *j = userdata;
        HydraError err;

        j->retry = sd_event_source_disable_unref(j->retry);
        hydra_error_clear(&err);
        if (job_send(j, &err) < 0)
                job_done(j, err.code, NULL, &err);
        return 0;
}

static int on_create_machine_reply(sd_bus_message *reply, void *userdata, sd_bus_error *ret_error) {
        MachineJob *j = userdata;
        const sd_bus_error *e;
        const char *path = NULL;
        HydraError err;
        int r;

        j->slot = sd_bus_slot_unref(j->slot);
        hydra_error_clear(&err);

        e = sd_bus_message_get_error(reply);
        if (e) {
                if (sd_bus_error_has_name(e, "org.freedesktop.machine1.MachineExists") &&
                    j->attempts < MACHINE_EXISTS_RETRIES) {
                        r = sd_event_add_time_relative(j->machined->event, &j->retry, CLOCK_MONOTONIC,
                                                       MACHINE_EXISTS_RETRY_USEC, 0, on_retry, j);
                        if (r >= 0) {
                                (void) sd_event_source_set_description(j->retry, "machine-exists-retry");
                                return 0;
                        }
                }
                r = sd_bus_message_get_errno(reply);  /* positive */
                (void) hydra_error_set(&err, r > 0 ? -r : -EIO, "machined's CreateMachine('%s', leader %d)%s: %s: %s",
                                       j->name, (int) j->pid,
                                       j->attempts > 1 ? " (asked again while the name was taken)" : "",
                                       e->name ? e->name : "error", e->message ? e->message : "(no message)");
                job_done(j, err.code, NULL, &err);
                return 0;
        }
        r = sd_bus_message_read(reply, "o", &path);
        if (r < 0) {
                (void) hydra_error_set(&err, r, "machined's CreateMachine('%s'): unexpected reply: %s", j->name,
                                       strerror(-r));
                job_done(j, r, NULL, &err);
                return 0;
        }
        job_done(j, 0, path, NULL);
        return 0;
}

/* hydrad.service's DevicePolicy=closed and DeviceAllow= (systemd/hydrad.service.in), again for the scope: the unit's
 * list is its own cgroup's, and machined moves QEMU out of it, into a scope that would otherwise let it open any
 * device node it can reach (root's QEMU: all of /dev). closed keeps systemd's pseudo-devices (/dev/null, zero, full,
 * random, urandom, tty, ptmx, pts). A device this host lacks is skipped by systemd ("Couldn't stat device"). With
 * devices.gpu, virtio-gpu-gl's virglrenderer opens a DRM render node (/dev/dri/renderD*): the drm class, whose
 * nodes are numbered by the host. As nspawn does for its containers (the same two properties in CreateMachine). */
static int append_device_allow_list(sd_bus_message *msg, bool gpu) {
        static const char *const devices[] = { "/dev/kvm", "/dev/net/tun", "/dev/vhost-net", "/dev/vhost-vsock" };
        int r;

        r = sd_bus_message_append(msg, "(sv)", "DevicePolicy", "s", "closed");
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'r', "sv");
        if (r >= 0)
                r = sd_bus_message_append(msg, "s", "DeviceAllow");
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'v', "a(ss)");
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "(ss)");
        for (size_t i = 0; r >= 0 && i < ELEMENTSOF(devices); i++)
                r = sd_bus_message_append(msg, "(ss)", devices[i], "rw");
        if (r >= 0 && gpu)
                r = sd_bus_message_append(msg, "(ss)", "char-drm", "rw");
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        return r;
}

/* CreateMachine(s name, ay id, s service, s class, u leader, s root_directory, a(sv) scope_properties) -> o. */
static int job_send(MachineJob *j, HydraError *err) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *msg = NULL;
        Machined *m = j->machined;
        int r;

        if (machined_connect(m) < 0)
                return hydra_error_set(err, m->bus_error.code, "%s", m->bus_error.message);

        r = sd_bus_message_new_method_call(m->bus, &msg, "org.freedesktop.machine1", "/org/freedesktop/machine1",
                                           "org.freedesktop.machine1.Manager", "CreateMachine");
        if (r >= 0)
                /* No id (machined accepts none), service "hydra", class vm, no root directory. */
                r = sd_bus_message_append(msg, "s", j->name);
        if (r >= 0)
                r = sd_bus_message_append_array(msg, 'y', NULL, 0);
        if (r >= 0)
                r = sd_bus_message_append(msg, "ssus", "hydra", "vm", (uint32_t) j->pid, "");
        if (r >= 0)
                r = sd_bus_message_open_container(msg, 'a', "(sv)");
        if (r >= 0 && j->props.cpu_quota_per_sec_usec > 0)
                r = sd_bus_message_append(msg, "(sv)", "CPUQuotaPerSecUSec", "t", j->props.cpu_quota_per_sec_usec);
        if (r >= 0 && j->props.memory_max > 0)
                r = sd_bus_message_append(msg, "(sv)", "MemoryMax", "t", j->props.memory_max);
        if (r >= 0)
                r = append_device_allow_list(msg, j->props.gpu);
        if (r >= 0)
                r = sd_bus_message_close_container(msg);
        if (r < 0)
                return hydra_error_set(err, r, "machined's CreateMachine('%s'): cannot build the call: %s", j->name,
                                       strerror(-r));

        r = sd_bus_call_async(m->bus, &j->slot, msg, on_create_machine_reply, j, CREATE_MACHINE_TIMEOUT_USEC);
        if (r < 0)
                return hydra_error_set(err, r, "machined's CreateMachine('%s'): cannot send the call: %s", j->name,
                                       strerror(-r));
        (void) sd_bus_slot_set_description(j->slot, "create-machine");
        j->attempts++;
        return 0;
}

int machine_register(Machined *m, const char *name, pid_t pid, const MachineProperties *props, machine_done_t done,
                     void *userdata, MachineJob **ret, HydraError *err) {
        MachineJob *j;
        int r;

        j = calloc(1, sizeof(*j));
        if (!j || !(j->name = strdup(name))) {
                free(j);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        j->pid = pid;
        j->props = props ? *props : (MachineProperties) {};
        j->done = done;
        j->userdata = userdata;
        j->machined = m;
        j->next = m->jobs;
        if (m->jobs)
                m->jobs->prev = j;
        m->jobs = j;

        r = job_send(j, err);
        if (r < 0) {
                machine_job_free(j);
                return r;
        }
        *ret = j;
        return 0;
}
