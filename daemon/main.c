/* SPDX-License-Identifier: MIT */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "api.h"
#include "api_pb.h"
#include "config.h"
#include "fs.h"
#include "grpc_probe.h"
#include "instance.h"
#include "log.h"
#include "loopstat.h"
#include "manager.h"
#include "service.h"

typedef struct Daemon {
        sd_event *event;
        HydraConfig config;
        Manager *manager;
        Api *api;
        int lock_fds[2];        /* the run and state directories' hydrad.lock, held for our life */
        LoopStat *loopstat;     /* HYDRA_LOOP_STATS=1: the loop's lateness, reported on SIGUSR2 */
        Subscription *status_sub; /* keeps systemd's STATUS= line current */
        bool exiting;
} Daemon;

static void help(void) {
        printf("Usage: hydrad [OPTIONS]\n"
               "Supervise the host and isolated VMs and serve the Hydra API.\n\n"
               "  -c, --config FILE     daemon settings (INI, section [hydrad]); default /etc/hydra/hydrad.conf if present\n"
               "      --state-dir DIR   specs, disks, logs (default /var/lib/hydra)\n"
               "      --run-dir DIR     sockets and runtime state (default /run/hydra)\n"
               "      --socket PATH     the API socket (default RUN_DIR/hydra.sock)\n"
               "      --log-level LVL   error, warning, info (default), debug\n"
               "      --on-exit WHAT    leave (default: VMs keep running) or stop\n"
               "  -h, --help            this help\n"
               "      --version         print the version\n");
}

static int parse_argv(int argc, char *argv[], HydraConfig *c, HydraError *err) {
        enum { ARG_STATE_DIR = 0x100, ARG_RUN_DIR, ARG_SOCKET, ARG_LOG_LEVEL, ARG_ON_EXIT, ARG_VERSION };
        static const struct option options[] = {
                { "config", required_argument, NULL, 'c' },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "run-dir", required_argument, NULL, ARG_RUN_DIR },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                { "on-exit", required_argument, NULL, ARG_ON_EXIT },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                {},
        };
        const char *config_file = NULL;
        int opt, r;

        /* The config file first, whatever its position, so that flags override it. */
        opterr = 0;
        while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) >= 0)
                if (opt == 'c')
                        config_file = optarg;
        if (!config_file && access("/etc/hydra/hydrad.conf", F_OK) == 0)
                config_file = "/etc/hydra/hydrad.conf";
        if (config_file) {
                r = config_load_file(c, config_file, err);
                if (r < 0)
                        return r;
        }

        opterr = 1;
        optind = 0;
        while ((opt = getopt_long(argc, argv, "c:h", options, NULL)) >= 0) {
                switch (opt) {
                case 'c':
                        break;
                case ARG_STATE_DIR:
                        r = config_set(c, "state_dir", optarg, err);
                        break;
                case ARG_RUN_DIR:
                        r = config_set(c, "run_dir", optarg, err);
                        break;
                case ARG_SOCKET:
                        r = config_set(c, "socket", optarg, err);
                        break;
                case ARG_LOG_LEVEL:
                        r = config_set(c, "log_level", optarg, err);
                        break;
                case ARG_ON_EXIT:
                        r = config_set(c, "on_exit", optarg, err);
                        break;
                case 'h':
                        help();
                        return 0;
                case ARG_VERSION:
                        printf("hydrad 0.1.0\n");
                        return 0;
                default:
                        return hydra_error_set(err, -EINVAL, "bad usage (see --help)");
                }
                if (r < 0)
                        return r;
        }
        if (optind < argc)
                return hydra_error_set(err, -EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
        return 1;
}

static void on_exit_done(void *userdata) {
        Daemon *d = userdata;
        (void) sd_event_exit(d->event, 0);
}

static void on_vms_stopped(Manager *m, void *userdata) {
        Daemon *d = userdata;
        log_info("all VMs stopped");
        api_shutdown(d->api, on_exit_done, d);
}

static int on_report_loop(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Daemon *d = userdata;
        loopstat_report(d->loopstat, "SIGUSR2");
        return 0;
}

static int on_terminate(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        Daemon *d = userdata;

        if (d->exiting) {
                log_info("received %s again while shutting down; still waiting", strsignal((int) si->ssi_signo));
                return 0;
        }
        d->exiting = true;
        log_info("received %s, shutting down (VMs: %s)", strsignal((int) si->ssi_signo),
                 d->config.on_exit == ON_EXIT_STOP ? "stopping them" : "left running");
        (void) sd_notify(0, "STOPPING=1");

        if (d->config.on_exit == ON_EXIT_STOP && manager_stop_all(d->manager, on_vms_stopped, d) == 0)
                return 0;
        api_shutdown(d->api, on_exit_done, d);
        return 0;
}

/* The run directory as tmpfiles.d/hydra.conf makes it when hydrad makes it: 0750 in socket_group, so that the
 * group's members reach the API socket. One that exists is left as it is (the administrator's, or tmpfiles'). */
static int make_run_dir(const HydraConfig *c, HydraError *err) {
        _cleanup_free_ char *parent = strdup(c->run_dir);
        char *slash;
        int r;

        if (!parent)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        slash = strrchr(parent, '/');
        if (slash && slash != parent) {
                *slash = '\0';
                r = mkdir_p(parent, 0755);
                if (r < 0)
                        return hydra_error_set(err, r, "create '%s': %s", parent, strerror(-r));
        }
        if (mkdir(c->run_dir, 0750) < 0) {
                if (errno == EEXIST)
                        return 0;
                return hydra_error_set(err, -errno, "create run directory '%s': %s", c->run_dir, strerror(errno));
        }
        if (c->socket_gid != (gid_t) -1 && chown(c->run_dir, (uid_t) -1, c->socket_gid) < 0)
                return hydra_error_set(err, -errno, "chown run directory '%s' to group '%s': %s", c->run_dir,
                                       c->socket_group, strerror(errno));
        return 0;
}

/* systemd's STATUS= line (`systemctl status hydrad`): both VMs, redone on every state or readiness change. */
static void notify_status(Daemon *d) {
        VmStatus sts[_ROLE_MAX];
        char text[256];

        for (Role role = 0; role < _ROLE_MAX; role++)
                vm_get_status(manager_get_vm(d->manager, role), &sts[role]);
        service_status_text(sts, _ROLE_MAX, text, sizeof(text));
        (void) sd_notifyf(0, "STATUS=%s", text);
}

static void on_vm_event(Manager *m, const HydraEvent *ev, Vm *vm, void *userdata) {
        if (ev->type == HYDRA_EVENT_STATE || ev->type == HYDRA_EVENT_READY)
                notify_status(userdata);
}

int main(int argc, char *argv[]) {
        Daemon d = { .lock_fds = { -EBADF, -EBADF } };
        _cleanup_close_ int activated_fd = -EBADF;
        HydraError err;
        sigset_t mask;
        int r;

        hydra_error_clear(&err);
        log_open();
        config_init(&d.config);
        r = parse_argv(argc, argv, &d.config, &err);
        if (r <= 0) {
                if (r < 0)
                        fprintf(stderr, "hydrad: %s\n", err.message);
                config_done(&d.config);
                return r < 0 ? 2 : 0;
        }
        if (config_finish(&d.config, &err) < 0) {
                fprintf(stderr, "hydrad: %s\n", err.message);
                config_done(&d.config);
                return 2;
        }
        log_set_max_level(d.config.log_level);

        /* Before anything is touched: a socket systemd passed that hydrad cannot serve is refused with nothing done. */
        if (service_take_activated_socket(d.config.socket_path, &activated_fd, &err) < 0) {
                log_error("%s", err.message);
                config_done(&d.config);
                return 1;
        }

        /* Before any thread exists (gRPC starts 8-10): every thread inherits this mask, so these signals reach
         * only the loop's signalfd and sd-event's child watches. */
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGCHLD);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGUSR1);
        sigaddset(&mask, SIGUSR2);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0) {
                log_error_errno(errno, "sigprocmask: %m");
                return 1;
        }
        signal(SIGPIPE, SIG_IGN);

        r = make_run_dir(&d.config, &err);
        if (r < 0) {
                log_error("%s", err.message);
                goto out;
        }
        /* Before anything touches the run or state directory: a second hydrad started there by mistake would
         * otherwise adopt the first one's QEMUs (rebinding console.sock, rewriting runtime.json) before the API
         * socket refused it (issue 9). */
        r = instance_lock((const char *const[]) { d.config.run_dir, d.config.state_dir },
                          (const char *const[]) { "run directory", "state directory" }, ELEMENTSOF(d.lock_fds),
                          d.lock_fds, &err);
        if (r < 0) {
                log_error("%s", err.message);
                goto out;
        }

        r = sd_event_default(&d.event);
        if (r < 0) {
                log_error_errno(r, "sd_event: %m");
                goto out;
        }
        /* WatchdogSec= in the unit: sd-event sends WATCHDOG=1 itself, at half the interval, while the loop turns. */
        r = sd_event_set_watchdog(d.event, true);
        if (r < 0)
                log_warning_errno(r, "cannot drive systemd's watchdog, ignoring: %m");
        else if (r > 0)
                log_info("systemd's watchdog is on: the loop pings it");
        (void) sd_event_add_signal(d.event, NULL, SIGTERM, on_terminate, &d);
        (void) sd_event_add_signal(d.event, NULL, SIGINT, on_terminate, &d);
        if (getenv("HYDRA_LOOP_STATS") && streq(getenv("HYDRA_LOOP_STATS"), "1")) {
                r = loopstat_new(d.event, &d.loopstat);
                if (r < 0)
                        log_warning_errno(r, "HYDRA_LOOP_STATS: cannot measure the loop, ignoring: %m");
                else {
                        (void) sd_event_add_signal(d.event, NULL, SIGUSR2, on_report_loop, &d);
                        log_info("measuring the loop's lateness (HYDRA_LOOP_STATS=1); SIGUSR2 reports it");
                }
        }

        r = manager_new(d.event, &d.config, &api_spec_codec, &d.manager);
        if (r < 0) {
                log_error_errno(r, "cannot create the manager: %m");
                goto out;
        }
        manager_set_grpc_prober(d.manager, &grpc_probe_prober);
        r = manager_load(d.manager, &err);
        if (r < 0) {
                log_error("%s", err.message);
                goto out;
        }
        r = api_new(d.event, d.manager, &d.config, TAKE_FD(activated_fd), &d.api, &err);
        if (r < 0) {
                log_error("cannot serve the API: %s", err.message);
                goto out;
        }
        /* The CRI socket is bound since manager_load(), but nothing is accepted before the loop runs. */
        for (Role role = 0; role < _ROLE_MAX; role++)
                vm_set_cri_fallback(manager_get_vm(d.manager, role), api_cri_fallback(d.api, role));

        /* STATUS= only for a service manager that listens ($NOTIFY_SOCKET, which children do not inherit). */
        if (getenv("NOTIFY_SOCKET")) {
                r = manager_subscribe(d.manager, -1, on_vm_event, &d, &d.status_sub);
                if (r < 0) {
                        log_error_errno(r, "cannot follow the VMs' states: %m");
                        goto out;
                }
        }
        /* Ready: the API serves, and every QEMU a previous hydrad left is adopted (manager_load). */
        (void) sd_notify(0, "READY=1");
        if (d.status_sub)
                notify_status(&d);
        manager_autostart(d.manager);
        log_info("hydrad ready (state %s, run %s, on-exit %s)", d.config.state_dir, d.config.run_dir,
                 on_exit_to_string(d.config.on_exit));

        r = sd_event_loop(d.event);
        if (r < 0)
                log_error_errno(r, "event loop failed: %m");
        else
                log_info("hydrad exiting");

out:
        if (d.manager)
                for (Role role = 0; role < _ROLE_MAX; role++)
                        vm_set_cri_fallback(manager_get_vm(d.manager, role), NULL);
        d.status_sub = subscription_free(d.status_sub);
        d.api = api_free(d.api);
        d.manager = manager_free(d.manager);
        d.loopstat = loopstat_free(d.loopstat);
        d.event = sd_event_unref(d.event);
        for (size_t i = 0; i < ELEMENTSOF(d.lock_fds); i++)
                d.lock_fds[i] = safe_close(d.lock_fds[i]);
        config_done(&d.config);
        return r < 0 ? 1 : 0;
}
