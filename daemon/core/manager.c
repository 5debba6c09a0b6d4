/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "log.h"
#include "manager.h"
#include "store.h"

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
        Subscription *subscriptions;
        uint64_t event_seq;

        void (*stop_all_done)(Manager *m, void *userdata);
        void *stop_all_userdata;
        unsigned stop_all_pending;
};

static void manager_emit(HydraEvent *ev, Vm *vm, void *userdata);

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
        ctx = (VmContext) {
                .event = e,
                .config = config,
                .codec = codec,
                .fetcher = m->fetcher,
                .cache_dir = m->cache_dir,
                .emit = manager_emit,
                .url_in_use = manager_url_in_use,
                .cache_queue = m->cache_queue,
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
                m->vms[role] = vm_free(m->vms[role]);
        /* What is queued is done (no callback follows), before the fetcher: a removal may wait for its worker. */
        m->cache_queue = disk_queue_free(m->cache_queue);
        m->fetcher = fetcher_free(m->fetcher);
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

int manager_load(Manager *m, HydraError *err) {
        bool unreadable = false;
        int r;

        r = mkdir_p(m->config->state_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create state directory '%s': %s", m->config->state_dir, strerror(-r));
        r = mkdir_p(m->config->run_dir, 0750);
        if (r < 0)
                return hydra_error_set(err, r, "create run directory '%s': %s", m->config->run_dir, strerror(-r));

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

void manager_autostart(Manager *m) {
        for (Role role = 0; role < _ROLE_MAX; role++)
                (void) vm_autostart(m->vms[role]);
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

static void on_vm_stopped(Vm *vm, int r, const HydraError *err, void *userdata) {
        Manager *m = userdata;

        if (r < 0)
                log_vm_warning(vm_name(vm), "VM '%s': stop on exit failed: %s", vm_name(vm), err ? err->message : "");
        if (--m->stop_all_pending == 0 && m->stop_all_done)
                m->stop_all_done(m, m->stop_all_userdata);
}

int manager_stop_all(Manager *m, void (*done)(Manager *m, void *userdata), void *userdata) {
        m->stop_all_done = done;
        m->stop_all_userdata = userdata;
        m->stop_all_pending = 1; /* held until every stop has been asked for */

        for (Role role = 0; role < _ROLE_MAX; role++) {
                Vm *vm = m->vms[role];
                HydraError err;
                VmOp *op;
                int r;

                if (!vm_is_registered(vm))
                        continue;
                r = vm_stop(vm, false, 0, on_vm_stopped, m, &op, &err);
                if (r < 0)
                        log_vm_warning(vm_name(vm), "VM '%s': cannot stop on exit: %s", vm_name(vm), err.message);
                else if (r == 0)
                        m->stop_all_pending++;
        }
        if (--m->stop_all_pending == 0)
                return 1;
        return 0;
}
