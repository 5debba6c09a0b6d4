/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "manager.h"
#include "store.h"
#include "vm.h"

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
        const GrpcProber *grpc_prober; /* borrowed, may be NULL */
        Fetcher *fetcher;            /* downloads of both VMs */
        char *cache_dir;
        Vm *vms[_ROLE_MAX];
        Subscription *subscriptions;
        uint64_t event_seq;

        void (*stop_all_done)(Manager *m, void *userdata);
        void *stop_all_userdata;
        unsigned stop_all_pending;
};

int manager_new(sd_event *e, const HydraConfig *config, const SpecCodec *codec, Manager **ret) {
        Manager *m;
        int r;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->event = sd_event_ref(e);
        m->config = config;
        m->codec = codec;
        r = fetcher_new(e, &m->fetcher);
        if (r < 0 || asprintf(&m->cache_dir, "%s/cache", config->state_dir) < 0) {
                manager_free(m);
                return r < 0 ? r : -ENOMEM;
        }
        for (Role role = 0; role < _ROLE_MAX; role++) {
                r = vm_new(m, role, &m->vms[role]);
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
        m->fetcher = fetcher_free(m->fetcher);
        free(m->cache_dir);
        sd_event_unref(m->event);
        free(m);
        return NULL;
}

int manager_load(Manager *m, HydraError *err) {
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
                if (r < 0)
                        log_vm_error(vm->name, "VM '%s': cannot load its stored spec, leaving it unregistered: %s%s",
                                     vm->name, e.message,
                                     access(vm->run_dir, F_OK) == 0 ? " (a QEMU it left running is taken back when "
                                                                     "the VM is registered again)" : "");
                else if (r > 0) {
                        log_vm_info(vm->name, "VM '%s': spec loaded", vm->name);
                        (void) vm_adopt(vm);
                }
        }
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

sd_event *manager_get_event(Manager *m) {
        return m->event;
}

const HydraConfig *manager_get_config(Manager *m) {
        return m->config;
}

const SpecCodec *manager_get_codec(Manager *m) {
        return m->codec;
}

Fetcher *manager_get_fetcher(Manager *m) {
        return m->fetcher;
}

void manager_set_grpc_prober(Manager *m, const GrpcProber *prober) {
        m->grpc_prober = prober;
}

const GrpcProber *manager_get_grpc_prober(Manager *m) {
        return m->grpc_prober;
}

const char *manager_get_cache_dir(Manager *m) {
        return m->cache_dir;
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

void manager_emit(Manager *m, HydraEvent *ev, Vm *vm) {
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
                log_vm_warning(vm->name, "VM '%s': stop on exit failed: %s", vm->name, err ? err->message : "");
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

                if (!vm->registered)
                        continue;
                r = vm_stop(vm, false, 0, on_vm_stopped, m, &op, &err);
                if (r < 0)
                        log_vm_warning(vm->name, "VM '%s': cannot stop on exit: %s", vm->name, err.message);
                else if (r == 0)
                        m->stop_all_pending++;
        }
        if (--m->stop_all_pending == 0)
                return 1;
        return 0;
}
