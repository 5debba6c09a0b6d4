/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cache.h"
#include "fs.h"
#include "log.h"
#include "manager.h"
#include "start_order.h"
#include "store.h"

/* How long a start waits for the VM it starts after when that VM sets no ready_timeout of its own (a first boot
 * under TCG that installs packages takes minutes, not an hour). */
#define DEPENDENCY_BOUND_USEC (3600ULL * 1000000ULL)

typedef struct DepWait DepWait;

/* A StartVm through the Manager: first waiting for the dependency (wait), then the VM's own start (vm_op). */
struct ManagerOp {
        Manager *manager;
        Role role;
        bool wait_ready;
        uint64_t timeout_usec;          /* the client's; 0: none */
        uint64_t begin_usec;            /* CLOCK_MONOTONIC */
        vm_op_done_t done;
        void *userdata;
        VmOp *vm_op;                    /* the VM's own start, once it runs */
        DepWait *wait;                  /* while waiting for the dependency */
        sd_event_source *timer;         /* the client's timeout, while waiting */
        ManagerOp *next, *prev;         /* in wait->waiters */
};

/* A VM waiting for the one it starts after: one per role, every StartVm of it joins. It carries on when every
 * client has gone (the start goes on, as a VM's own start does). */
struct DepWait {
        Manager *manager;
        Role role, dep;
        bool autostart;                 /* the VM then starts as autostart does (the restart policy's way) */
        VmOp *dep_op;                   /* the dependency's start, until it is ready */
        ManagerOp *waiters;
};

struct Subscription {
        Manager *manager;
        int role;                    /* < 0: both */
        manager_event_handler_t handler;
        void *userdata;
        Subscription *next, *prev;
};

struct Manager {
        sd_event *event;
        const HydraConfig *config;   /* borrowed */
        const SpecCodec *codec;      /* borrowed */
        Fetcher *fetcher;            /* downloads of both VMs */
        char *cache_dir;
        DiskQueue *cache_queue;      /* removals from the cache: the sweep at start-up, the VMs' (VmContext) */
        Vm *vms[_ROLE_MAX];
        Machined *machined;          /* NULL: QEMU stays hydrad's child, for the reason in no_machined */
        HydraError no_machined;
        Subscription *subscriptions;
        uint64_t event_seq;
        DepWait *waits[_ROLE_MAX];

        void (*stop_all_done)(Manager *m, void *userdata);
        void *stop_all_userdata;
        unsigned stop_all_pending;
        bool stop_all_asked[_ROLE_MAX];
        bool stop_all_busy[_ROLE_MAX];  /* its stop is under way: the VM it starts after waits */
};

static void manager_emit(HydraEvent *ev, Vm *vm, void *userdata);
static int manager_check_spec(const Vm *vm, const VmSpec *spec, HydraError *err, void *userdata);
static DepWait *dep_wait_free(DepWait *w);

/* A destroy or a new spec keeps the downloads the other VM uses. */
static bool manager_url_in_use(const Vm *vm, const char *url, void *userdata) {
        Manager *m = userdata;

        for (Role role = 0; role < _ROLE_MAX; role++)
                if (m->vms[role] && m->vms[role] != vm && vm_uses_url(m->vms[role], url))
                        return true;
        return false;
}

static void on_cache_idle(DiskQueue *q, void *userdata) {
        Manager *m = userdata;

        for (Role role = 0; role < _ROLE_MAX; role++)
                vm_cache_idle(m->vms[role]);
}

/* Whether each QEMU goes to a scope of its own registered with machined (hydrad.conf machined): decided once, and
 * said once. */
static int manager_machined_init(Manager *m) {
        int r;

        r = machined_new(m->event, m->config->machined, &m->machined, &m->no_machined);
        if (r < 0)
                return r;
        if (r == 0)
                log_info("%s: QEMU runs as hydrad's child without a scope or machined registration",
                         m->no_machined.message);
        else if (m->no_machined.code < 0)
                log_warning("machined = yes, but %s; each start tries again (QEMU runs as hydrad's child meanwhile)",
                            m->no_machined.message);
        else
                log_info("Each QEMU runs in a scope of its own under machine.slice, registered with "
                         "systemd-machined as hydra-ROLE");
        return 0;
}

int manager_new(sd_event *e, const HydraConfig *config, const SpecCodec *codec, Manager **ret) {
        VmContext ctx;
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->event = sd_event_ref(e);
        m->config = config;
        m->codec = codec;
        r = fetcher_new(e, &m->fetcher);
        if (r >= 0)
                r = disk_queue_new(e, "disk-cache", on_cache_idle, m, &m->cache_queue);
        if (r < 0 || asprintf(&m->cache_dir, "%s/cache", config->state_dir) < 0) {
                manager_free(m);
                return r < 0 ? r : -ENOMEM;
        }
        r = manager_machined_init(m);
        if (r < 0) {
                manager_free(m);
                return r;
        }
        ctx = (VmContext) {
                .event = e,
                .config = config,
                .codec = codec,
                .fetcher = m->fetcher,
                .cache_dir = m->cache_dir,
                .emit = manager_emit,
                .url_in_use = manager_url_in_use,
                .check_spec = manager_check_spec,
                .cache_queue = m->cache_queue,
                .machined = m->machined,
                .no_machined = m->machined ? NULL : m->no_machined.message,
                .userdata = m,
        };
        for (Role role = 0; role < _ROLE_MAX; role++) {
                r = vm_new(&ctx, role, &m->vms[role]);
                if (r < 0) {
                        manager_free(m);
                        return r;
                }
        }
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        while (m->subscriptions)
                subscription_free(m->subscriptions);
        for (Role role = 0; role < _ROLE_MAX; role++)
                m->waits[role] = dep_wait_free(m->waits[role]);
        for (Role role = 0; role < _ROLE_MAX; role++)
                m->vms[role] = vm_free(m->vms[role]);
        /* What is queued is done (no callback follows), before the fetcher: a removal may wait for its worker. */
        m->cache_queue = disk_queue_free(m->cache_queue);
        m->fetcher = fetcher_free(m->fetcher);
        m->machined = machined_free(m->machined);   /* after the VMs: each cancels its own registration */
        free(m->cache_dir);
        sd_event_unref(m->event);
        free(m);
        return NULL;
}

static void on_swept(int r, const HydraError *err, void *userdata) {
        CacheSweep *s = userdata;
        char size[32];

        if (r < 0) {
                log_warning("Cannot sweep the download cache, ignoring: %s", err->message);
                return;
        }
        for (size_t i = 0; i < s->n_removed; i++)
                log_info("removed cached download %s (%s): no registered VM uses it", s->removed[i],
                         cache_format_size(s->sizes[i], size));
        for (char **f = s->failed; f && *f; f++)
                log_warning("Cannot remove the cached download %s, ignoring it", *f);
}

/* Off the loop, and before any preparation (they wait for the cache queue): what no registered spec names goes,
 * the downloads of earlier specs and what a crash left behind. */
static void manager_sweep_cache(Manager *m) {
        const char *keep[2 * _ROLE_MAX] = {};
        CacheSweep *s;
        int r;

        for (Role role = 0; role < _ROLE_MAX; role++) {
                const VmSpec *spec = vm_get_spec(m->vms[role]);

                if (spec) {
                        keep[2 * role] = spec->image.url;
                        keep[2 * role + 1] = spec->bare.artifact.url;
                }
        }
        r = cache_sweep_new(m->cache_dir, keep, ELEMENTSOF(keep), m->config->state_dir, &s);
        if (r >= 0) {
                s->userdata = m;
                r = disk_queue_call(m->cache_queue, cache_sweep_run, s, cache_sweep_free, on_swept, s);
        }
        if (r < 0)
                log_warning_errno(r, "Cannot sweep the download cache, ignoring: %m");
}

/* With a qemu_user, QEMU (not in hydrad's group) must pass through the state directory to its VM's directory and to
 * the cached base images: the state directory gets o+x (0751: no listing), the cache 0710 in qemu_user's group. What
 * is inside the VMs' directories is handed over at each launch (vm_qemu.c). */
static int manager_open_to_qemu_user(Manager *m, HydraError *err) {
        const HydraConfig *c = m->config;
        struct stat st;
        int r;

        if (!c->qemu_user)
                return 0;
        if (stat(c->state_dir, &st) < 0)
                return hydra_error_set(err, -errno, "'%s': %s", c->state_dir, strerror(errno));
        if (!(st.st_mode & S_IXOTH) && chmod(c->state_dir, (st.st_mode & 07777) | S_IXOTH) < 0)
                return hydra_error_set(err, -errno, "let qemu_user %s through '%s': %s", c->qemu_user, c->state_dir,
                                       strerror(errno));
        r = mkdir_private(m->cache_dir, c->qemu_gid);
        if (r < 0)
                return hydra_error_set(err, r, "let qemu_user %s through '%s': %s", c->qemu_user, m->cache_dir,
                                       strerror(-r));
        return 0;
}

int manager_load(Manager *m, HydraError *err) {
        bool unreadable = false;
        int r;

        r = mkdir_p(m->config->state_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create state directory '%s': %s", m->config->state_dir, strerror(-r));
        r = mkdir_p(m->config->run_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create run directory '%s': %s", m->config->run_dir, strerror(-r));
        r = manager_open_to_qemu_user(m, err);
        if (r < 0)
                return r;

        for (Role role = 0; role < _ROLE_MAX; role++) {
                Vm *vm = m->vms[role];
                HydraError e;

                hydra_error_clear(&e);
                r = vm_load(vm, &e);
                if (r < 0) {
                        unreadable = true;
                        log_vm_error(vm_name(vm), "VM '%s': cannot load its stored spec, leaving it unregistered: %s%s",
                                     vm_name(vm), e.message,
                                     vm_has_run_dir(vm) ? " (a QEMU it left running is taken back when the VM is "
                                                          "registered again)" : "");
                } else if (r > 0) {
                        log_vm_info(vm_name(vm), "VM '%s': spec loaded", vm_name(vm));
                        (void) vm_adopt(vm);
                }
        }
        if (unreadable)
                log_warning("The download cache is not swept: a stored spec that cannot be read may name what is in "
                            "it (remove what it does not need from '%s' by hand)", m->cache_dir);
        else
                manager_sweep_cache(m);
        return 0;
}


Vm *manager_get_vm(Manager *m, Role role) {
        if ((int) role < 0 || role >= _ROLE_MAX)
                return NULL;
        return m->vms[role];
}

void manager_set_grpc_prober(Manager *m, const GrpcProber *prober) {
        for (Role role = 0; role < _ROLE_MAX; role++)
                vm_set_grpc_prober(m->vms[role], prober);
}

int manager_subscribe(Manager *m, int role, manager_event_handler_t handler, void *userdata, Subscription **ret) {
        Subscription *s;

        s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        *s = (Subscription) { .manager = m, .role = role, .handler = handler, .userdata = userdata };
        s->next = m->subscriptions;
        if (m->subscriptions)
                m->subscriptions->prev = s;
        m->subscriptions = s;
        *ret = s;
        return 0;
}

Subscription *subscription_free(Subscription *s) {
        if (!s)
                return NULL;
        if (s->prev)
                s->prev->next = s->next;
        else
                s->manager->subscriptions = s->next;
        if (s->next)
                s->next->prev = s->prev;
        free(s);
        return NULL;
}

static void manager_emit(HydraEvent *ev, Vm *vm, void *userdata) {
        Manager *m = userdata;
        struct timespec ts;

        (void) clock_gettime(CLOCK_REALTIME, &ts);
        /* Console bytes are not WatchEvents events: they take no number, so a stream's seq has no gaps but the
         * other role's events and the ones it lost. */
        ev->seq = ev->type == HYDRA_EVENT_CONSOLE ? 0 : ++m->event_seq;
        ev->time_usec = (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;

        /* A handler may not free other subscriptions; it may free its own. */
        for (Subscription *s = m->subscriptions, *next; s; s = next) {
                next = s->next;
                if (s->role < 0 || s->role == (int) ev->role)
                        s->handler(m, ev, vm, s->userdata);
        }
}

/* --- two VMs, one device: supervision.start_after --- */

static void manager_notice(Manager *m, Role role, const char *fmt, ...) _printf_(3, 4);
static void manager_notice(Manager *m, Role role, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        HydraEvent ev = { .role = role, .type = HYDRA_EVENT_NOTICE };
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;
        log_vm_info(vm_name(m->vms[role]), "VM '%s': %s", vm_name(m->vms[role]), msg);
        ev.notice = msg;
        manager_emit(&ev, m->vms[role], m);
}

static uint64_t now_monotonic_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static bool vm_down(const Vm *vm) {
        VmStatus st;

        vm_get_status(vm, &st);
        return !vm_state_has_process(st.state) && st.state != VM_STATE_PREPARING;
}

static Role start_after(const Vm *vm) {
        const VmSpec *spec = vm_get_spec(vm);

        return spec ? vm_spec_start_after(spec) : _ROLE_INVALID;
}

static bool probe_none(const Vm *vm) {
        const VmSpec *spec = vm_get_spec(vm);

        return spec && spec->supervision.probe == PROBE_NONE;
}

/* What a VM that starts after vm waits for: ready, or running when it has no probe. */
static bool dep_ready(const Vm *vm) {
        VmStatus st;

        vm_get_status(vm, &st);
        return st.registered && st.state == VM_STATE_RUNNING && (st.ready || probe_none(vm));
}

size_t manager_start_order(Manager *m, Role ret[static _ROLE_MAX]) {
        int after[_ROLE_MAX];
        size_t order[_ROLE_MAX], n = 0;

        for (Role role = 0; role < _ROLE_MAX; role++) {
                Role a = start_after(m->vms[role]);

                after[role] = a >= 0 && vm_is_registered(m->vms[a]) ? (int) a : -1;
        }
        if (start_order(after, _ROLE_MAX, order) < 0) /* a cycle is never registered */
                for (size_t i = 0; i < _ROLE_MAX; i++)
                        order[i] = i;
        for (size_t i = 0; i < _ROLE_MAX; i++)
                if (vm_is_registered(m->vms[order[i]]))
                        ret[n++] = (Role) order[i];
        return n;
}

/* RegisterVm: the host forwards of the two VMs may not collide (QEMU's hostfwd of the second would fail to bind),
 * and start_after may not form a cycle. */
static int manager_check_spec(const Vm *vm, const VmSpec *spec, HydraError *err, void *userdata) {
        Manager *m = userdata;
        Role role = vm_role(vm), a;
        int after[_ROLE_MAX];
        size_t order[_ROLE_MAX];

        for (Role o = 0; o < _ROLE_MAX; o++) {
                const VmSpec *os = o == role ? NULL : vm_get_spec(m->vms[o]);
                size_t j;
                int i;

                after[o] = -1;
                if (!os)
                        continue;
                a = vm_spec_start_after(os);
                after[o] = a >= 0 ? (int) a : -1;
                i = vm_spec_forwards_clash(spec, os, &j);
                if (i >= 0) {
                        const PortForward *f = &spec->forwards[i], *g = &os->forwards[j];

                        return hydra_error_set(err, -EINVAL, "forwards[%d].host_port: %s %s:%" PRIu32 " of VM '%s' "
                                               "is also a host forward of VM '%s' (its forwards[%zu]: %s %s:%" PRIu32
                                               " to guest port %" PRIu32 "): the two VMs cannot both bind host port "
                                               "%" PRIu32 " (allowed: each host port in one VM only)",
                                               i, forward_protocol_to_string(f->protocol), port_forward_host_addr(f),
                                               f->host_port, vm_name(vm), vm_name(m->vms[o]), j,
                                               forward_protocol_to_string(g->protocol), port_forward_host_addr(g),
                                               g->host_port, g->guest_port, f->host_port);
                }
        }
        a = vm_spec_start_after(spec);
        after[role] = a >= 0 ? (int) a : -1;
        if (start_order(after, _ROLE_MAX, order) == -ELOOP)
                return hydra_error_set(err, -EINVAL, "supervision.start_after: '%s' starts after '%s', which starts "
                                       "after '%s' (a cycle: allowed in one of the two specs only)", vm_name(vm),
                                       role_to_string(a), vm_name(vm));
        return 0;
}

static void op_unlink(ManagerOp *op) {
        DepWait *w = op->wait;

        if (!w)
                return;
        if (op->prev)
                op->prev->next = op->next;
        else
                w->waiters = op->next;
        if (op->next)
                op->next->prev = op->prev;
        op->next = op->prev = NULL;
        op->wait = NULL;
}

ManagerOp *manager_op_cancel(ManagerOp *op) {
        if (!op)
                return NULL;
        op_unlink(op);
        sd_event_source_disable_unref(op->timer);
        vm_op_cancel(op->vm_op);
        free(op);
        return NULL;
}

/* The op is over: freed, then its caller hears of it. */
static void op_complete(ManagerOp *op, int r, const HydraError *err) {
        vm_op_done_t done = op->done;
        void *userdata = op->userdata;
        Vm *vm = op->manager->vms[op->role];

        op->vm_op = NULL; /* done, or never begun */
        manager_op_cancel(op);
        done(vm, r, err, userdata);
}

static void on_vm_start_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        op_complete(userdata, r, err);
}

/* The VM's own start, within what is left of the client's timeout. Returns as vm_start. */
static int op_start_vm(ManagerOp *op, HydraError *err) {
        uint64_t timeout = op->timeout_usec;

        if (timeout > 0) {
                uint64_t spent = now_monotonic_usec() - op->begin_usec;

                timeout = spent < timeout ? timeout - spent : 1;
        }
        return vm_start(op->manager->vms[op->role], op->wait_ready, timeout, on_vm_start_done, op, &op->vm_op, err);
}

static void on_start_ignored(Vm *vm, int r, const HydraError *err, void *userdata) {
}

static DepWait *dep_wait_free(DepWait *w) {
        if (!w)
                return NULL;
        vm_op_cancel(w->dep_op);
        while (w->waiters)
                op_unlink(w->waiters);
        free(w);
        return NULL;
}

/* The wait is over (r < 0: failed with err): every waiter either fails with it or goes on to the VM's own start. */
static void dep_wait_finish(DepWait *w, int r, const HydraError *err) {
        Manager *m = w->manager;
        ManagerOp *waiters = w->waiters;
        HydraError e;

        if (err)
                e = *err;
        else
                hydra_error_clear(&e);
        m->waits[w->role] = NULL;
        for (ManagerOp *op = waiters; op; op = op->next)
                op->wait = NULL;
        w->waiters = NULL;
        dep_wait_free(w);

        while (waiters) {
                ManagerOp *op = waiters;
                HydraError oe;
                int q;

                waiters = op->next;
                op->next = op->prev = NULL;
                op->timer = sd_event_source_disable_unref(op->timer);
                if (r < 0) {
                        op_complete(op, r, &e);
                        continue;
                }
                hydra_error_clear(&oe);
                q = op_start_vm(op, &oe);
                if (q < 0)
                        op_complete(op, q, &oe);
                else if (q > 0)
                        op_complete(op, 0, NULL);
        }
}

static void on_dep_done(Vm *dvm, int r, const HydraError *err, void *userdata) {
        DepWait *w = userdata;
        Manager *m = w->manager;
        Vm *vm = m->vms[w->role];
        HydraError e;
        VmOp *op;

        w->dep_op = NULL;
        hydra_error_clear(&e);
        if (r < 0) {
                r = hydra_error_set(&e, HYDRA_EDEPENDENCY, "VM '%s' starts after '%s' (supervision.start_after), "
                                    "which did not become %s: %s", vm_name(vm), vm_name(dvm),
                                    probe_none(dvm) ? "running" : "ready", err ? err->message : strerror(-r));
                log_vm_warning(vm_name(vm), "VM '%s': not started: %s", vm_name(vm), e.message);
                manager_notice(m, w->role, "%s", e.message);
                return dep_wait_finish(w, r, &e);
        }

        manager_notice(m, w->role, "%s is %s: starting %s", vm_name(dvm), probe_none(dvm) ? "running" : "ready",
                       vm_name(vm));
        if (w->autostart)
                (void) vm_autostart(vm);
        else {
                /* One start, whether or not a client still waits; the clients' starts join it. */
                r = vm_start(vm, false, 0, on_start_ignored, NULL, &op, &e);
                if (r == 0)
                        vm_op_cancel(op);
                else if (r < 0)
                        log_vm_warning(vm_name(vm), "VM '%s': not started: %s", vm_name(vm), e.message);
        }
        dep_wait_finish(w, r < 0 ? r : 0, &e);
}

/* Starts the dependency (if it is not up) and waits for it. Returns 1 when it is ready already (nothing to wait
 * for), 0 when waiting (m->waits[role]), or HYDRA_EDEPENDENCY with err. */
static int dep_wait_new(Manager *m, Role role, Role dep, bool autostart, HydraError *err) {
        Vm *vm = m->vms[role], *dvm = m->vms[dep];
        DepWait *w;
        HydraError e;
        int r;

        if (!vm_is_registered(dvm))
                return hydra_error_set(err, HYDRA_EDEPENDENCY, "VM '%s' starts after '%s' (supervision.start_after), "
                                       "which is not registered: register '%s' first, or '%s' without start_after",
                                       vm_name(vm), vm_name(dvm), vm_name(dvm), vm_name(vm));
        if (dep_ready(dvm))
                return 1;

        w = calloc(1, sizeof(*w));
        if (!w)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        *w = (DepWait) { .manager = m, .role = role, .dep = dep, .autostart = autostart };
        hydra_error_clear(&e);
        r = vm_start(dvm, !probe_none(dvm), DEPENDENCY_BOUND_USEC, on_dep_done, w, &w->dep_op, &e);
        if (r != 0) {
                free(w);
                if (r > 0)
                        return 1;
                return hydra_error_set(err, HYDRA_EDEPENDENCY, "VM '%s' starts after '%s' "
                                       "(supervision.start_after), which cannot start: %s", vm_name(vm),
                                       vm_name(dvm), e.message);
        }
        m->waits[role] = w;
        manager_notice(m, role, "waiting for %s to be %s (supervision.start_after)", vm_name(dvm),
                       probe_none(dvm) ? "running" : "ready");
        return 0;
}

/* A stop (or a destroy of the dependency's start) ends a wait: its clients hear why. */
static void dep_wait_cancel(Manager *m, Role role) {
        DepWait *w = m->waits[role];
        HydraError e;

        if (!w)
                return;
        hydra_error_set(&e, -ECANCELED, "start of VM '%s' was cancelled by a stop (it was waiting for '%s' to be "
                        "ready)", vm_name(m->vms[role]), vm_name(m->vms[w->dep]));
        manager_notice(m, role, "%s", e.message);
        dep_wait_finish(w, e.code, &e);
}

static int on_op_timeout(sd_event_source *s, uint64_t usec, void *userdata) {
        ManagerOp *op = userdata;
        Manager *m = op->manager;
        HydraError err;
        VmStatus st;

        vm_get_status(m->vms[op->wait->dep], &st);
        hydra_error_set(&err, -ETIMEDOUT, "VM '%s' did not become %s within %llu s: it waits for '%s' to be ready "
                        "(supervision.start_after; '%s' is %s%s%s%s; the start goes on)", vm_name(m->vms[op->role]),
                        op->wait_ready ? "ready" : "running", (unsigned long long) (op->timeout_usec / 1000000ULL),
                        st.name, st.name, vm_state_to_string(st.state),
                        st.state == VM_STATE_RUNNING && !st.ready ? ", not ready" : "", st.ready_detail ? ": " : "",
                        strempty(st.ready_detail));
        op_complete(op, err.code, &err);
        return 0;
}

int manager_start(Manager *m, Role role, bool wait_ready, uint64_t timeout_usec, vm_op_done_t done, void *userdata,
                  ManagerOp **ret_op, HydraError *err) {
        Vm *vm = m->vms[role];
        Role dep = start_after(vm);
        ManagerOp *op;
        int r;

        op = calloc(1, sizeof(*op));
        if (!op)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        *op = (ManagerOp) { .manager = m, .role = role, .wait_ready = wait_ready, .timeout_usec = timeout_usec,
                            .begin_usec = now_monotonic_usec(), .done = done, .userdata = userdata };

        /* A VM that is up already is not held back; nor is a request vm_start refuses at once (it says why). */
        if (dep >= 0 && (m->waits[role] || vm_down(vm)) && !(wait_ready && probe_none(vm))) {
                r = m->waits[role] ? 0 : dep_wait_new(m, role, dep, false, err);
                if (r < 0) {
                        free(op);
                        return r;
                }
                if (r == 0) {
                        DepWait *w = m->waits[role];

                        if (timeout_usec > 0) {
                                r = sd_event_add_time_relative(m->event, &op->timer, CLOCK_MONOTONIC, timeout_usec, 0,
                                                               on_op_timeout, op);
                                if (r < 0) {
                                        free(op);
                                        return hydra_error_set(err, r, "out of memory");
                                }
                                (void) sd_event_source_set_description(op->timer, "start-after-timeout");
                        }
                        op->wait = w;
                        op->next = w->waiters;
                        if (w->waiters)
                                w->waiters->prev = op;
                        w->waiters = op;
                        *ret_op = op;
                        return 0;
                }
        }

        r = op_start_vm(op, err);
        if (r != 0) {
                free(op);
                return r;
        }
        *ret_op = op;
        return 0;
}

/* Stopping a VM that another one starts after: said, not refused (the other keeps running, without its kubelet
 * shares); stop --all stops them in order. */
static void warn_dependents(Manager *m, Role role) {
        for (Role d = 0; d < _ROLE_MAX; d++) {
                Vm *dvm = m->vms[d];
                VmStatus st;

                if (d == role || start_after(dvm) != role || vm_down(dvm))
                        continue;
                vm_get_status(dvm, &st);
                log_vm_warning(vm_name(m->vms[role]), "VM '%s': stopping it while '%s', which starts after it "
                               "(supervision.start_after), is %s", vm_name(m->vms[role]), st.name,
                               vm_state_to_string(st.state));
                manager_notice(m, role, "'%s' starts after '%s' (supervision.start_after) and is %s: it keeps "
                               "running without '%s'; stop '%s' first (hydractl stop --all stops both, in order)",
                               st.name, vm_name(m->vms[role]), vm_state_to_string(st.state), vm_name(m->vms[role]),
                               st.name);
        }
}

int manager_stop(Manager *m, Role role, bool force, uint64_t timeout_usec, vm_op_done_t done, void *userdata,
                 VmOp **ret_op, HydraError *err) {
        Vm *vm = m->vms[role];

        if (vm_is_registered(vm)) {
                dep_wait_cancel(m, role);
                if (!vm_down(vm))
                        warn_dependents(m, role);
        }
        return vm_stop(vm, force, timeout_usec, done, userdata, ret_op, err);
}

void manager_autostart(Manager *m) {
        Role order[_ROLE_MAX];
        size_t n = manager_start_order(m, order);

        for (size_t i = 0; i < n; i++) {
                Vm *vm = m->vms[order[i]];
                const VmSpec *spec = vm_get_spec(vm);
                Role dep = start_after(vm);

                if (spec->supervision.autostart && dep >= 0 && vm_down(vm)) {
                        HydraError err;
                        int r;

                        r = dep_wait_new(m, order[i], dep, true, &err);
                        if (r < 0)
                                log_vm_warning(vm_name(vm), "VM '%s': not autostarted: %s", vm_name(vm),
                                               err.message);
                        if (r <= 0)
                                continue;
                }
                (void) vm_autostart(vm);
        }
}

static void stop_all_step(Manager *m);

static void on_vm_stopped(Vm *vm, int r, const HydraError *err, void *userdata) {
        Manager *m = userdata;

        if (r < 0)
                log_vm_warning(vm_name(vm), "VM '%s': stop on exit failed: %s", vm_name(vm), err ? err->message : "");
        m->stop_all_busy[vm_role(vm)] = false;
        stop_all_step(m); /* what waited for this one */
        if (--m->stop_all_pending == 0 && m->stop_all_done)
                m->stop_all_done(m, m->stop_all_userdata);
}

/* Asks every VM to stop whose dependents (the VMs that start after it) have stopped. */
static void stop_all_step(Manager *m) {
        Role order[_ROLE_MAX];
        size_t n = manager_start_order(m, order);

        for (size_t i = n; i > 0; i--) {
                Role role = order[i - 1];
                Vm *vm = m->vms[role];
                bool blocked = false;
                HydraError err;
                VmOp *op;
                int r;

                if (m->stop_all_asked[role])
                        continue;
                for (Role d = 0; d < _ROLE_MAX; d++)
                        if (m->stop_all_busy[d] && start_after(m->vms[d]) == role)
                                blocked = true;
                if (blocked)
                        continue;
                m->stop_all_asked[role] = true;
                r = vm_stop(vm, false, 0, on_vm_stopped, m, &op, &err);
                if (r < 0)
                        log_vm_warning(vm_name(vm), "VM '%s': cannot stop on exit: %s", vm_name(vm), err.message);
                else if (r == 0) {
                        m->stop_all_busy[role] = true;
                        m->stop_all_pending++;
                }
        }
}

int manager_stop_all(Manager *m, void (*done)(Manager *m, void *userdata), void *userdata) {
        m->stop_all_done = done;
        m->stop_all_userdata = userdata;
        m->stop_all_pending = 1; /* held until every stop has been asked for */

        for (Role role = 0; role < _ROLE_MAX; role++) {
                dep_wait_cancel(m, role);
                m->stop_all_asked[role] = m->stop_all_busy[role] = false;
        }
        stop_all_step(m);
        if (--m->stop_all_pending == 0)
                return 1;
        return 0;
}
