/* SPDX-License-Identifier: MIT */
/* hydractl: the thin client of hydrad. A table of subcommands; each builds one request, makes one call through
 * rpc.c and prints the reply through output.c. Exit status: 0 success, 1 RPC error, 2 bad usage or spec file. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h> /* isfinite: a macro, no libm */
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "console.h"
#include "fromenv.h"
#include "grpc/health/v1/health.pb-c.h"
#include "hydra/v1/hydra.pb-c.h"
#include "macro.h"
#include "output.h"
#include "password.h"
#include "progress.h"
#include "grpc_status.h"
#include "rpc.h"
#include "specfile.h"
#include "start_order.h"

#define EXIT_RPC 1
#define EXIT_USAGE 2

#define DEFAULT_SOCKET "/run/hydra/hydra.sock"

#define METHOD(name) "/hydra.v1.Hydra/" name
#define HEALTH_CHECK "/grpc.health.v1.Health/Check"

/* Call deadlines, in milliseconds, when --timeout (global) does not set one. The daemon's own limits must expire
 * first so that its error, not ours, is what the user reads. */
#define SEC_MS INT64_C(1000)
#define DEADLINE_DEFAULT_MS (30 * SEC_MS)
#define DEADLINE_START_MS (600 * SEC_MS)  /* start without --timeout: preparation may download images */
#define DEADLINE_READY_MS (1800 * SEC_MS) /* --wait ready: a first boot may install packages, under TCG */
#define DEADLINE_LOGS_MS (300 * SEC_MS)   /* logs without -f: the stored log, rotated files included */
#define DEADLINE_MARGIN_MS (30 * SEC_MS)  /* over a request's own timeout */
#define DEADLINE_DESTROY_MS (120 * SEC_MS) /* a forced stop: quit, SIGTERM, SIGKILL */
#define STOP_DEFAULT_TIMEOUT_SEC 60       /* StopVmRequest.timeout_seconds 0: hydrad's default (or the spec's) */

typedef struct Verb {
        const char *name;
        const char *args;    /* usage after the name */
        const char *summary;
        const char *options; /* help text for the verb's options, or NULL */
        int (*run)(const struct Verb *verb, int argc, char *argv[]);
        bool hidden;
} Verb;

static const char *arg_socket = NULL;
static bool arg_json = false;
static int64_t arg_timeout_ms = -1; /* global --timeout; -1: per command default */

static RpcClient *client = NULL;
static bool stdout_gone = false; /* watch's reader went away: do not complain about it again at exit */

/* --- usage and errors --- */

_printf_(2, 3) static int usage_error(const Verb *verb, const char *fmt, ...) {
        va_list ap;

        fputs("hydractl: ", stderr);
        if (verb)
                fprintf(stderr, "%s: ", verb->name);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        if (verb)
                fprintf(stderr, " (see 'hydractl %s --help')\n", verb->name);
        else
                fputs(" (see 'hydractl --help')\n", stderr);
        return EXIT_USAGE;
}

static int option_error(const Verb *verb, int c, char *argv[]) {
        const char *arg = argv[optind - 1];

        if (c == ':')
                return usage_error(verb, "option '%s' needs a value", arg);
        if (optopt > 0 && optopt < 128 && !(arg[0] == '-' && arg[1] == '-'))
                return usage_error(verb, "unknown option '-%c'", optopt);
        return usage_error(verb, "unknown option '%s'", arg);
}

static int rpc_error(const RpcStatus *status) {
        fprintf(stderr, "hydractl: %s: %s\n", grpc_status_name(status->code),
                isempty(status->message) ? "(no message)" : status->message);
        return EXIT_RPC;
}

static void help_verb(const Verb *verb) {
        printf("Usage: hydractl [GLOBAL OPTIONS] %s%s%s\n\n%s\n", verb->name, isempty(verb->args) ? "" : " ",
               strempty(verb->args), verb->summary);
        if (verb->options)
                printf("\nOptions:\n%s", verb->options);
        if (strstr(strempty(verb->args), "ROLE"))
                printf("\nROLE is host or isolated.");
        printf("\nSee 'hydractl --help' for the global options.\n");
}

/* --- argument helpers --- */

static int parse_role(const Verb *verb, const char *s, Hydra__V1__Role *ret) {
        Hydra__V1__Role role = role_from_name(s);

        if (role == HYDRA__V1__ROLE__ROLE_UNSPECIFIED)
                return usage_error(verb, "unknown role '%s' (expected host or isolated)", s);
        *ret = role;
        return 0;
}

/* The positional arguments left after getopt: ROLE (required or optional), nothing else. */
static int parse_role_args(const Verb *verb, int argc, char *argv[], bool required, Hydra__V1__Role *ret) {
        int n = argc - optind;

        if (n > 1)
                return usage_error(verb, "unexpected argument '%s'", argv[optind + 1]);
        if (n == 0) {
                if (required)
                        return usage_error(verb, "missing ROLE (host or isolated)");
                *ret = HYDRA__V1__ROLE__ROLE_UNSPECIFIED;
                return 0;
        }
        return parse_role(verb, argv[optind], ret);
}

static int parse_no_args(const Verb *verb, int argc, char *argv[]) {
        if (argc > optind)
                return usage_error(verb, "unexpected argument '%s'", argv[optind]);
        return 0;
}

/* Whole seconds for a request field: 1 to 2^32-1. */
static int parse_seconds(const Verb *verb, const char *s, uint32_t *ret) {
        char *end;
        unsigned long long v;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || s[0] == '+' || v == 0 || v > UINT32_MAX)
                return usage_error(verb, "--timeout: '%s' is not a whole number of seconds (1-%" PRIu32 ")", s,
                                   UINT32_MAX);
        *ret = (uint32_t) v;
        return 0;
}

static int64_t deadline_ms(int64_t default_ms) {
        return arg_timeout_ms >= 0 ? arg_timeout_ms : default_ms;
}

/* The getopt loop of every verb: "-h" and "--json" are handled here, the rest by the verb's handler. A verb's
 * options may come before or after ROLE (GNU getopt permutes). Returns 0 to go on, or the exit status. */
#define COMMON_OPTIONS { "help", no_argument, NULL, 'h' }, { "json", no_argument, NULL, 'j' }

typedef int (*OptionHandler)(const Verb *verb, int c, const char *arg, void *userdata);

/* shortopts: the verb's own short options in getopt's syntax ("f" for -f), besides -h and -j. */
static int verb_getopt_short(const Verb *verb, int argc, char *argv[], const char *shortopts,
                             const struct option *options, OptionHandler handle, void *userdata, bool *ret_help) {
        char optstring[32];
        int c, r;

        (void) snprintf(optstring, sizeof(optstring), ":hj%s", shortopts);
        optind = 0; /* GNU: full re-initialization, argv[0] is the verb */
        opterr = 0;
        *ret_help = false;
        while ((c = getopt_long(argc, argv, optstring, options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help_verb(verb);
                        *ret_help = true;
                        return 0;
                case 'j':
                        arg_json = true;
                        break;
                case '?':
                case ':':
                        return option_error(verb, c, argv);
                default:
                        r = handle ? handle(verb, c, optarg, userdata) : EXIT_USAGE;
                        if (r != 0)
                                return r;
                }
        }
        return 0;
}

static int verb_getopt(const Verb *verb, int argc, char *argv[], const struct option *options,
                       OptionHandler handle, void *userdata, bool *ret_help) {
        return verb_getopt_short(verb, argc, argv, "", options, handle, userdata, ret_help);
}

static RpcClient *get_client(void) {
        if (!client) {
                client = rpc_client_new(arg_socket);
                if (!client) {
                        fprintf(stderr, "hydractl: out of memory\n");
                        exit(EXIT_RPC);
                }
        }
        return client;
}

/* Returns 0 (and *ret_reply) or EXIT_RPC after printing the error. */
static int call_unary(const char *method, const void *request, const ProtobufCMessageDescriptor *reply_descriptor,
                      int64_t default_deadline_ms, void *ret_reply) {
        RpcStatus status;

        if (rpc_call_unary(get_client(), method, request, reply_descriptor, deadline_ms(default_deadline_ms),
                           (ProtobufCMessage **) ret_reply, &status) < 0)
                return rpc_error(&status);
        return 0;
}

static int print_vm(const Hydra__V1__Vm *vm) {
        if (arg_json) {
                json_auto_t *j = json_from_vm(vm);
                return print_json(stdout, j) < 0 ? EXIT_RPC : 0;
        }
        print_vm_line(stdout, vm);
        return 0;
}

/* --- the spec: register and spec-dump --- */

typedef struct SpecArgs {
        const char *spec_path;
        char **sets; /* borrowed from argv */
        size_t n_sets;
        bool apply_on_next_start;
        bool from_env;
        const char *preset;
} SpecArgs;

static int handle_spec_option(const Verb *verb, int c, const char *arg, void *userdata) {
        SpecArgs *a = userdata;
        char **sets;

        switch (c) {
        case 'f':
                if (a->spec_path)
                        return usage_error(verb, "--spec given twice");
                a->spec_path = arg;
                return 0;
        case 's':
                sets = realloc(a->sets, (a->n_sets + 1) * sizeof(*sets));
                if (!sets) {
                        fprintf(stderr, "hydractl: out of memory\n");
                        return EXIT_RPC;
                }
                sets[a->n_sets++] = (char *) arg;
                a->sets = sets;
                return 0;
        case 'a':
                a->apply_on_next_start = true;
                return 0;
        case 'e':
                a->from_env = true;
                return 0;
        case 'p':
                if (!fromenv_preset_known(arg))
                        return usage_error(verb, "--preset: '%s' is not a preset (known: %s)", arg,
                                           fromenv_preset_names());
                a->preset = arg;
                return 0;
        }
        return EXIT_USAGE;
}

static const struct option spec_options[] = {
        COMMON_OPTIONS,
        { "spec", required_argument, NULL, 'f' },
        { "set", required_argument, NULL, 's' },
        { "apply-on-next-start", no_argument, NULL, 'a' },
        { "from-env", no_argument, NULL, 'e' },
        { "preset", required_argument, NULL, 'p' },
        {},
};

/* Where the spec comes from: exactly one of --spec and --from-env (spec-dump: --set alone is fine too). */
static int check_spec_source(const Verb *verb, const SpecArgs *a, bool required) {
        if (a->spec_path && a->from_env)
                return usage_error(verb, "--spec and --from-env exclude each other");
        if (a->preset && !a->from_env)
                return usage_error(verb, "--preset needs --from-env");
        if (required && !a->spec_path && !a->from_env)
                return usage_error(verb, "missing --spec FILE (or --from-env)");
        return 0;
}

/* The spec file or the environment, then each --set in order. Spec errors are the user's input: EXIT_USAGE. */
static int build_spec(const SpecArgs *a, Hydra__V1__VmSpec **ret) {
        _cleanup_(spec_freep) Hydra__V1__VmSpec *spec = spec_new();
        SpecFileInfo info = {};
        HydraError err = {};

        if (!spec) {
                fprintf(stderr, "hydractl: out of memory\n");
                return EXIT_RPC;
        }
        if (a->spec_path) {
                if (spec_load_file(spec, a->spec_path, &info, &err) < 0) {
                        fprintf(stderr, "hydractl: %s\n", err.message);
                        return EXIT_USAGE;
                }
                if (info.secrets_exposed)
                        fprintf(stderr, "hydractl: warning: %s holds secrets (%s) but other users may read it (mode "
                                "%04o): chmod 600 %s\n", a->spec_path, info.secrets, (unsigned) info.mode,
                                a->spec_path);
        }
        if (a->from_env && spec_from_env(spec, a->preset, stderr, &err) < 0) {
                fprintf(stderr, "hydractl: --from-env: %s\n", err.message);
                return EXIT_USAGE;
        }
        for (size_t i = 0; i < a->n_sets; i++)
                if (spec_apply_set(spec, a->sets[i], &err) < 0) {
                        fprintf(stderr, "hydractl: %s\n", err.message);
                        return EXIT_USAGE;
                }
        if (spec_finish(spec, &err) < 0) {
                fprintf(stderr, "hydractl: %s%s%s\n", strempty(a->spec_path), a->spec_path ? ": " : "",
                        err.message);
                return EXIT_USAGE;
        }
        *ret = TAKE_PTR(spec);
        return 0;
}

/* guest.password becomes guest.password_hash: hydractl never sends a cleartext password. The hash of the spec
 * registered now is kept when it matches the password: a new salt would read as a new guest configuration to
 * hydrad, and reset the VM's disk. registered may be NULL. */
static int hash_guest_password(Hydra__V1__VmSpec *spec, const Hydra__V1__VmSpec *registered) {
        Hydra__V1__Guest *g = spec->guest;
        const char *old = registered && registered->guest ? registered->guest->password_hash : NULL;
        _cleanup_free_ char *hash = NULL;
        HydraError err = {};
        int r;

        if (!g || isempty(g->password))
                return 0;
        if (!isempty(old) && password_verify(g->password, old))
                hash = strdup(old);
        else if (password_hash_yescrypt(g->password, &hash, &err) < 0) {
                fprintf(stderr, "hydractl: guest.password: %s\n", err.message);
                (void) spec_field_set(&g->password, NULL);
                return err.code == -EINVAL ? EXIT_USAGE : EXIT_RPC;
        }
        r = hash ? spec_field_set(&g->password_hash, hash) : -ENOMEM;
        /* Wiped either way: spec_field_set() zeroes a string before freeing it. */
        (void) spec_field_set(&g->password, NULL);
        if (r < 0) {
                fprintf(stderr, "hydractl: out of memory\n");
                return EXIT_RPC;
        }
        return 0;
}

/* The VM registered as role now, whose spec holds the password hash to reuse. *ret_vm is NULL (and 0 returned)
 * when nothing is registered; otherwise returns EXIT_RPC after printing the error. */
static int get_registered_vm(Hydra__V1__Role role, Hydra__V1__Vm **ret_vm) {
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        RpcStatus status;

        req.role = role;
        *ret_vm = NULL;
        if (rpc_call_unary(get_client(), METHOD("GetVm"), &req.base, &hydra__v1__vm__descriptor,
                           deadline_ms(DEADLINE_DEFAULT_MS), (ProtobufCMessage **) ret_vm, &status) < 0) {
                if (status.code == RPC_STATUS_NOT_FOUND) /* nothing registered yet */
                        return 0;
                return rpc_error(&status);
        }
        return 0;
}

static int verb_register(const Verb *verb, int argc, char *argv[]) {
        _cleanup_(spec_freep) Hydra__V1__VmSpec *spec = NULL;
        Hydra__V1__RegisterVmRequest req = HYDRA__V1__REGISTER_VM_REQUEST__INIT;
        Hydra__V1__RegisterVmResponse *reply = NULL;
        Hydra__V1__Vm *registered = NULL;
        SpecArgs a = {};
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, spec_options, handle_spec_option, &a, &help_shown);
        if (r == 0 && !help_shown)
                r = parse_role_args(verb, argc, argv, true, &req.role);
        if (r == 0 && !help_shown)
                r = check_spec_source(verb, &a, true);
        if (r == 0 && !help_shown)
                r = build_spec(&a, &spec);
        free(a.sets);
        if (r != 0 || help_shown)
                return r;
        /* hydrad refuses it too; said here as the spec's other errors are, before asking anything. */
        if (spec->supervision && !isempty(spec->supervision->start_after) &&
            role_from_name(spec->supervision->start_after) == req.role) {
                fprintf(stderr, "hydractl: supervision.start_after: '%s' is this VM's own role (allowed: the other "
                        "VM, %s, or empty for none)\n", spec->supervision->start_after,
                        req.role == HYDRA__V1__ROLE__ROLE_HOST ? "isolated" : "host");
                return EXIT_USAGE;
        }

        if (spec->guest && !isempty(spec->guest->password)) {
                r = get_registered_vm(req.role, &registered);
                if (r == 0)
                        r = hash_guest_password(spec, registered ? registered->spec : NULL);
                if (registered)
                        hydra__v1__vm__free_unpacked(registered, NULL);
                if (r != 0)
                        return r;
        }

        req.spec = spec;
        req.apply_on_next_start = a.apply_on_next_start;
        r = call_unary(METHOD("RegisterVm"), &req, &hydra__v1__register_vm_response__descriptor,
                       DEADLINE_DEFAULT_MS, &reply);
        if (r != 0)
                return r;

        if (!reply->vm)
                r = 0; /* nothing to show */
        else if (arg_json) {
                json_auto_t *j = json_from_vm(reply->vm);
                if (j)
                        (void) json_object_set_new(j, "changed", json_boolean(reply->changed));
                r = print_json(stdout, j) < 0 ? EXIT_RPC : 0;
        } else
                printf("%s: %s (spec generation %" PRIu64 "%s)\n", role_to_name(reply->vm->role),
                       vm_state_to_name(reply->vm->state), reply->vm->spec_generation,
                       reply->changed ? "" : ", unchanged");
        hydra__v1__register_vm_response__free_unpacked(reply, NULL);
        return r;
}

/* Hidden: the parsed spec as JSON, without a daemon. For tests of the spec file format and of --from-env. A
 * password is hashed as register would (with a new salt: there is no registered hash to reuse). */
static int verb_spec_dump(const Verb *verb, int argc, char *argv[]) {
        _cleanup_(spec_freep) Hydra__V1__VmSpec *spec = NULL;
        SpecArgs a = {};
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, spec_options, handle_spec_option, &a, &help_shown);
        if (r == 0 && !help_shown)
                r = parse_no_args(verb, argc, argv);
        if (r == 0 && !help_shown && a.apply_on_next_start)
                r = usage_error(verb, "--apply-on-next-start is for register");
        if (r == 0 && !help_shown)
                r = check_spec_source(verb, &a, false);
        if (r == 0 && !help_shown)
                r = build_spec(&a, &spec);
        free(a.sets);
        if (r != 0 || help_shown)
                return r;
        r = hash_guest_password(spec, NULL);
        if (r != 0)
                return r;

        json_auto_t *j = json_from_vm_spec(spec);
        return print_json(stdout, j) < 0 ? EXIT_RPC : 0;
}

/* --- lifecycle --- */

typedef struct LifecycleArgs {
        const char *wait;
        uint32_t timeout_sec;
        bool force;
        bool keep_cache;
        bool all;
} LifecycleArgs;

static int handle_lifecycle_option(const Verb *verb, int c, const char *arg, void *userdata) {
        LifecycleArgs *a = userdata;

        switch (c) {
        case 'w':
                a->wait = arg;
                return 0;
        case 't':
                return parse_seconds(verb, arg, &a->timeout_sec);
        case 'f':
                a->force = true;
                return 0;
        case 'k':
                a->keep_cache = true;
                return 0;
        case 'a':
                a->all = true;
                return 0;
        }
        return EXIT_USAGE;
}

static int on_start_event(const ProtobufCMessage *m, void *userdata) {
        const Hydra__V1__Event *event = (const Hydra__V1__Event *) m;
        ProgressDisplay *display = userdata;

        if (event->kind_case == HYDRA__V1__EVENT__KIND_PROGRESS)
                progress_display_update(display, event->progress);
        else if (event->kind_case == HYDRA__V1__EVENT__KIND_NOTICE && event->notice)
                progress_display_notice(display, event->notice->message);
        return 0;
}

static void on_start_tick(void *userdata) {
        progress_display_tick(userdata);
}

/* StartVm, showing the preparation's progress from WatchEvents on stderr while it runs. */
static int start_with_progress(const Hydra__V1__StartVmRequest *req, int64_t default_deadline_ms,
                               Hydra__V1__Vm **ret_vm) {
        Hydra__V1__WatchEventsRequest watch = HYDRA__V1__WATCH_EVENTS_REQUEST__INIT;
        _cleanup_(progress_display_freep) ProgressDisplay *display = NULL;
        ProgressMode mode = progress_mode_for(stderr, arg_json);
        RpcCompanionStream stream = {
                .method = METHOD("WatchEvents"),
                .request = &watch.base,
                .reply_descriptor = &hydra__v1__event__descriptor,
                .handler = on_start_event,
                .tick = on_start_tick,
        };
        RpcStatus status;
        int r;

        if (mode == PROGRESS_NONE)
                return call_unary(METHOD("StartVm"), req, &hydra__v1__vm__descriptor, default_deadline_ms, ret_vm);

        display = progress_display_new(stderr, mode, role_to_name(req->role));
        if (!display) {
                fprintf(stderr, "hydractl: out of memory\n");
                return EXIT_RPC;
        }
        watch.role = req->role;
        stream.userdata = display;
        r = rpc_call_unary_with_stream(get_client(), METHOD("StartVm"), &req->base, &hydra__v1__vm__descriptor,
                                       deadline_ms(default_deadline_ms), (ProtobufCMessage **) ret_vm, &stream,
                                       &status);
        display = progress_display_free(display); /* the bar goes before the result or the error is printed */
        if (r < 0)
                return rpc_error(&status);
        return 0;
}

/* The registered VMs, each after the one it starts after (supervision.start_after): start --all's order, stop
 * --all's reversed. Returns 0 with *ret_reply (owning the VMs) and ret_order filled, or EXIT_RPC. */
static int list_in_start_order(Hydra__V1__ListVmsResponse **ret_reply, size_t ret_order[static 64], size_t *ret_n) {
        Hydra__V1__ListVmsRequest req = HYDRA__V1__LIST_VMS_REQUEST__INIT;
        Hydra__V1__ListVmsResponse *reply = NULL;
        int after[64];
        int r;

        r = call_unary(METHOD("ListVms"), &req, &hydra__v1__list_vms_response__descriptor, DEADLINE_DEFAULT_MS,
                       &reply);
        if (r != 0)
                return r;
        for (size_t i = 0; i < reply->n_vms && i < 64; i++) {
                const char *name = vm_start_after(reply->vms[i]);

                after[i] = -1;
                for (size_t k = 0; name && k < reply->n_vms && k < 64; k++)
                        if (k != i && streq(role_to_name(reply->vms[k]->role), name))
                                after[i] = (int) k;
        }
        if (reply->n_vms > 64 || start_order(after, reply->n_vms, ret_order) < 0) {
                fprintf(stderr, "hydractl: the VMs' start_after settings form a cycle\n");
                hydra__v1__list_vms_response__free_unpacked(reply, NULL);
                return EXIT_RPC;
        }
        *ret_reply = reply;
        *ret_n = reply->n_vms;
        return 0;
}

/* The VM's spec names start_after. Any failure here is StartVm's to report. */
static bool starts_after(Hydra__V1__Role role) {
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        Hydra__V1__Vm *vm = NULL;
        RpcStatus status;
        bool r;

        req.role = role;
        if (rpc_call_unary(get_client(), METHOD("GetVm"), &req.base, &hydra__v1__vm__descriptor,
                           deadline_ms(DEADLINE_DEFAULT_MS), (ProtobufCMessage **) &vm, &status) < 0)
                return false;
        r = vm_start_after(vm) != NULL;
        hydra__v1__vm__free_unpacked(vm, NULL);
        return r;
}

/* start --all: every registered VM in start order, each start returning before the next begins (a VM that starts
 * after another waits for it anyway: hydrad starts it first). The first failure ends it. */
static int start_all(const LifecycleArgs *a, bool ready) {
        Hydra__V1__ListVmsResponse *list = NULL;
        size_t order[64], n;
        int r;

        r = list_in_start_order(&list, order, &n);
        if (r != 0)
                return r;
        if (n == 0 && !arg_json)
                printf("no VMs registered\n");
        for (size_t i = 0; i < n && r == 0; i++) {
                Hydra__V1__StartVmRequest req = HYDRA__V1__START_VM_REQUEST__INIT;
                Hydra__V1__Vm *vm = NULL;

                req.role = list->vms[order[i]]->role;
                req.wait = ready ? HYDRA__V1__WAIT_FOR__WAIT_FOR_READY : HYDRA__V1__WAIT_FOR__WAIT_FOR_RUNNING;
                req.timeout_seconds = a->timeout_sec;
                r = start_with_progress(&req, a->timeout_sec > 0 ? a->timeout_sec * SEC_MS + DEADLINE_MARGIN_MS
                                                                 : DEADLINE_READY_MS, &vm);
                if (r == 0) {
                        r = print_vm(vm);
                        hydra__v1__vm__free_unpacked(vm, NULL);
                }
        }
        hydra__v1__list_vms_response__free_unpacked(list, NULL);
        return r;
}

static int verb_start(const Verb *verb, int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "wait", required_argument, NULL, 'w' },
                { "timeout", required_argument, NULL, 't' },
                { "all", no_argument, NULL, 'a' },
                {},
        };
        Hydra__V1__StartVmRequest req = HYDRA__V1__START_VM_REQUEST__INIT;
        Hydra__V1__Vm *vm = NULL;
        LifecycleArgs a = {};
        bool help_shown, ready;
        int64_t deadline;
        int r;

        r = verb_getopt(verb, argc, argv, options, handle_lifecycle_option, &a, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = a.all ? parse_no_args(verb, argc, argv) : parse_role_args(verb, argc, argv, true, &req.role);
        if (r != 0)
                return r;
        if (a.wait && !streq(a.wait, "running") && !streq(a.wait, "ready"))
                return usage_error(verb, "--wait: '%s' is not one of: running, ready", a.wait);

        ready = a.wait && streq(a.wait, "ready");
        if (a.all)
                return start_all(&a, ready);
        req.wait = ready ? HYDRA__V1__WAIT_FOR__WAIT_FOR_READY : HYDRA__V1__WAIT_FOR__WAIT_FOR_RUNNING;
        req.timeout_seconds = a.timeout_sec;
        if (a.timeout_sec > 0)
                deadline = a.timeout_sec * SEC_MS + DEADLINE_MARGIN_MS;
        else if (ready || (arg_timeout_ms < 0 && starts_after(req.role)))
                deadline = DEADLINE_READY_MS; /* a VM that starts after another waits for that one's first boot */
        else
                deadline = DEADLINE_START_MS;
        r = start_with_progress(&req, deadline, &vm);
        if (r != 0)
                return r;
        r = print_vm(vm);
        hydra__v1__vm__free_unpacked(vm, NULL);
        return r;
}

/* How long hydrad gives the guest when StopVm says 0: the spec's [supervision] stop_timeout, else hydrad's own
 * setting (assumed to be its default, 60 s). Our deadline must outlast it. Any failure here is StopVm's to report. */
static uint32_t spec_stop_timeout(Hydra__V1__Role role) {
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        Hydra__V1__Vm *vm = NULL;
        uint32_t sec = STOP_DEFAULT_TIMEOUT_SEC;
        RpcStatus status;

        req.role = role;
        if (rpc_call_unary(get_client(), METHOD("GetVm"), &req.base, &hydra__v1__vm__descriptor,
                           deadline_ms(DEADLINE_DEFAULT_MS), (ProtobufCMessage **) &vm, &status) < 0)
                return sec;
        if (vm->spec && vm->spec->supervision && vm->spec->supervision->stop_timeout_seconds > 0)
                sec = vm->spec->supervision->stop_timeout_seconds;
        hydra__v1__vm__free_unpacked(vm, NULL);
        return sec;
}

/* StopVm of one VM, the deadline outlasting what hydrad gives the guest. */
static int stop_one(const LifecycleArgs *a, Hydra__V1__Role role, Hydra__V1__Vm **ret_vm) {
        Hydra__V1__StopVmRequest req = HYDRA__V1__STOP_VM_REQUEST__INIT;
        uint32_t wait_sec;

        req.role = role;
        req.force = a->force;
        req.timeout_seconds = a->timeout_sec;
        /* The global --timeout, when given, is the deadline whatever the guest gets: no need to ask. */
        wait_sec = a->timeout_sec > 0 ? a->timeout_sec
                   : arg_timeout_ms < 0 ? spec_stop_timeout(req.role)
                                        : STOP_DEFAULT_TIMEOUT_SEC;
        return call_unary(METHOD("StopVm"), &req, &hydra__v1__vm__descriptor,
                          (int64_t) wait_sec * SEC_MS + DEADLINE_MARGIN_MS, ret_vm);
}

static bool vm_is_up(const Hydra__V1__Vm *vm) {
        return vm->state == HYDRA__V1__VM_STATE__VM_STATE_PREPARING ||
               vm->state == HYDRA__V1__VM_STATE__VM_STATE_STARTING ||
               vm->state == HYDRA__V1__VM_STATE__VM_STATE_RUNNING ||
               vm->state == HYDRA__V1__VM_STATE__VM_STATE_STOPPING;
}

/* stop ROLE while a VM that starts after it is up: hydrad stops it anyway (and says so in a notice); the person
 * reads it here. */
static void warn_dependents(Hydra__V1__Role role) {
        Hydra__V1__ListVmsRequest req = HYDRA__V1__LIST_VMS_REQUEST__INIT;
        Hydra__V1__ListVmsResponse *reply = NULL;
        RpcStatus status;

        if (rpc_call_unary(get_client(), METHOD("ListVms"), &req.base, &hydra__v1__list_vms_response__descriptor,
                           deadline_ms(DEADLINE_DEFAULT_MS), (ProtobufCMessage **) &reply, &status) < 0)
                return; /* StopVm's to report */
        for (size_t i = 0; i < reply->n_vms; i++) {
                const Hydra__V1__Vm *vm = reply->vms[i];
                const char *after = vm_start_after(vm);

                if (vm->role != role && after && role_from_name(after) == role && vm_is_up(vm))
                        fprintf(stderr, "hydractl: warning: %s starts after %s (supervision.start_after) and is %s: "
                                "it keeps running without %s; stop %s first, or use stop --all\n",
                                role_to_name(vm->role), role_to_name(role), vm_state_to_name(vm->state),
                                role_to_name(role), role_to_name(vm->role));
        }
        hydra__v1__list_vms_response__free_unpacked(reply, NULL);
}

/* stop --all: every registered VM, a VM that starts after another before that one, each stopped before the next. */
static int stop_all(const LifecycleArgs *a) {
        Hydra__V1__ListVmsResponse *list = NULL;
        size_t order[64], n;
        int r;

        r = list_in_start_order(&list, order, &n);
        if (r != 0)
                return r;
        if (n == 0 && !arg_json)
                printf("no VMs registered\n");
        for (size_t i = n; i > 0 && r == 0; i--) {
                Hydra__V1__Vm *vm = NULL;

                r = stop_one(a, list->vms[order[i - 1]]->role, &vm);
                if (r == 0) {
                        r = print_vm(vm);
                        hydra__v1__vm__free_unpacked(vm, NULL);
                }
        }
        hydra__v1__list_vms_response__free_unpacked(list, NULL);
        return r;
}

static int verb_stop(const Verb *verb, int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "force", no_argument, NULL, 'f' },
                { "timeout", required_argument, NULL, 't' },
                { "all", no_argument, NULL, 'a' },
                {},
        };
        Hydra__V1__Role role = HYDRA__V1__ROLE__ROLE_UNSPECIFIED;
        Hydra__V1__Vm *vm = NULL;
        LifecycleArgs a = {};
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, options, handle_lifecycle_option, &a, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = a.all ? parse_no_args(verb, argc, argv) : parse_role_args(verb, argc, argv, true, &role);
        if (r != 0)
                return r;
        if (a.all)
                return stop_all(&a);

        warn_dependents(role);
        r = stop_one(&a, role, &vm);
        if (r != 0)
                return r;
        r = print_vm(vm);
        hydra__v1__vm__free_unpacked(vm, NULL);
        return r;
}

static int verb_destroy(const Verb *verb, int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "keep-cache", no_argument, NULL, 'k' },
                {},
        };
        Hydra__V1__DestroyVmRequest req = HYDRA__V1__DESTROY_VM_REQUEST__INIT;
        Hydra__V1__DestroyVmResponse *reply = NULL;
        LifecycleArgs a = {};
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, options, handle_lifecycle_option, &a, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, true, &req.role);
        if (r != 0)
                return r;

        req.keep_cache = a.keep_cache;
        r = call_unary(METHOD("DestroyVm"), &req, &hydra__v1__destroy_vm_response__descriptor,
                       DEADLINE_DESTROY_MS, &reply);
        if (r != 0)
                return r;
        hydra__v1__destroy_vm_response__free_unpacked(reply, NULL);

        /* DestroyVm returns nothing: the VM is gone. */
        if (arg_json) {
                json_auto_t *j = json_pack("{s:s, s:b}", "role", role_to_name(req.role), "destroyed", 1);
                return print_json(stdout, j) < 0 ? EXIT_RPC : 0;
        }
        printf("%s: destroyed\n", role_to_name(req.role));
        return 0;
}

/* --- status, list --- */

static int list_vms(void) {
        Hydra__V1__ListVmsRequest req = HYDRA__V1__LIST_VMS_REQUEST__INIT;
        Hydra__V1__ListVmsResponse *reply = NULL;
        int r;

        r = call_unary(METHOD("ListVms"), &req, &hydra__v1__list_vms_response__descriptor, DEADLINE_DEFAULT_MS,
                       &reply);
        if (r != 0)
                return r;
        if (arg_json)
                for (size_t i = 0; i < reply->n_vms && r == 0; i++) {
                        json_auto_t *j = json_from_vm(reply->vms[i]);
                        r = print_json(stdout, j) < 0 ? EXIT_RPC : 0;
                }
        else if (reply->n_vms == 0)
                printf("no VMs registered\n");
        else
                print_vm_table(stdout, reply->vms, reply->n_vms);
        hydra__v1__list_vms_response__free_unpacked(reply, NULL);
        return r;
}

static int verb_status(const Verb *verb, int argc, char *argv[]) {
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        Hydra__V1__Vm *vm = NULL;
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, (const struct option[]) { COMMON_OPTIONS, {} }, NULL, NULL, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, false, &req.role);
        if (r != 0)
                return r;
        if (req.role == HYDRA__V1__ROLE__ROLE_UNSPECIFIED)
                return list_vms();

        r = call_unary(METHOD("GetVm"), &req, &hydra__v1__vm__descriptor, DEADLINE_DEFAULT_MS, &vm);
        if (r != 0)
                return r;
        if (arg_json) {
                json_auto_t *j = json_from_vm(vm);
                r = print_json(stdout, j) < 0 ? EXIT_RPC : 0;
        } else
                print_vm_block(stdout, vm);
        hydra__v1__vm__free_unpacked(vm, NULL);
        return r;
}

static int verb_list(const Verb *verb, int argc, char *argv[]) {
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, (const struct option[]) { COMMON_OPTIONS, {} }, NULL, NULL, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_no_args(verb, argc, argv);
        if (r != 0)
                return r;
        return list_vms();
}

/* --- watch, logs --- */

static volatile sig_atomic_t stream_interrupted = 0;

static void on_stream_signal(int sig) {
        stream_interrupted = 1;
}

static bool stream_check_interrupted(void *userdata) {
        return stream_interrupted;
}

/* Interrupting a stream that runs until then (watch, logs -f) is how it normally ends: cancel the call, clean
 * up, exit 0. */
static void stream_catch_signals(void) {
        struct sigaction sa = { .sa_handler = on_stream_signal }; /* no SA_RESTART: wake the pluck */

        sigemptyset(&sa.sa_mask);
        (void) sigaction(SIGINT, &sa, NULL);
        (void) sigaction(SIGTERM, &sa, NULL);
        (void) sigaction(SIGHUP, &sa, NULL);
}

static int on_watch_event(const ProtobufCMessage *m, void *userdata) {
        const Hydra__V1__Event *event = (const Hydra__V1__Event *) m;
        int *write_error = userdata;

        /* rpc.c polls stream_check_interrupted() only while no message arrives: a stream that never pauses ends
         * here. */
        if (stream_interrupted)
                return 1;
        if (arg_json) {
                json_auto_t *j = json_from_event(event);
                if (print_json(stdout, j) < 0)
                        goto fail;
                return 0;
        }
        print_event_line(stdout, event);
        if (fflush(stdout) == EOF)
                goto fail;
        return 0;

fail:
        /* The reader went away (watch | head -1): end quietly. */
        *write_error = errno > 0 ? errno : EIO;
        return 1;
}

static int verb_watch(const Verb *verb, int argc, char *argv[]) {
        Hydra__V1__WatchEventsRequest req = HYDRA__V1__WATCH_EVENTS_REQUEST__INIT;
        RpcStatus status;
        bool help_shown;
        int r, write_error = 0;

        r = verb_getopt(verb, argc, argv, (const struct option[]) { COMMON_OPTIONS, {} }, NULL, NULL, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, false, &req.role);
        if (r != 0)
                return r;

        stream_catch_signals();
        r = rpc_call_server_stream(get_client(), METHOD("WatchEvents"), &req.base, &hydra__v1__event__descriptor,
                                   deadline_ms(RPC_NO_DEADLINE), on_watch_event, stream_check_interrupted,
                                   &write_error, &status);
        if (write_error == EPIPE)
                stdout_gone = true;
        if (r < 0)
                return rpc_error(&status);
        if (r == 0 && !arg_json)
                fprintf(stderr, "hydractl: hydrad ended the event stream\n");
        return 0;
}

typedef struct LogsArgs {
        bool follow;
        uint64_t tail_bytes;
} LogsArgs;

/* A number of bytes, optionally with K, M or G (binary units): 1 or more. */
static int parse_bytes(const Verb *verb, const char *s, uint64_t *ret) {
        static const char units[] = "KMG";
        unsigned long long v;
        const char *u;
        char *end;
        int shift = 0;

        errno = 0;
        v = strtoull(s, &end, 10);
        if (errno == 0 && end != s && *end != '\0' && end[1] == '\0' &&
            (u = strchr(units, toupper((unsigned char) *end)))) {
                shift = 10 * (int) (u - units + 1);
                end++;
        }
        if (errno != 0 || end == s || *end != '\0' || !(s[0] >= '0' && s[0] <= '9') || v == 0 ||
            v > (UINT64_MAX >> shift))
                return usage_error(verb, "--tail: '%s' is not a number of bytes (1 or more; K, M or G may follow, "
                                   "e.g. 64K)", s);
        *ret = (uint64_t) v << shift;
        return 0;
}

static int handle_logs_option(const Verb *verb, int c, const char *arg, void *userdata) {
        LogsArgs *a = userdata;

        switch (c) {
        case 'f':
                a->follow = true;
                return 0;
        case 'n':
                return parse_bytes(verb, arg, &a->tail_bytes);
        }
        return EXIT_USAGE;
}

static int on_log_chunk(const ProtobufCMessage *m, void *userdata) {
        const Hydra__V1__ConsoleChunk *chunk = (const Hydra__V1__ConsoleChunk *) m;
        int *write_error = userdata;

        if (stream_interrupted) /* as in on_watch_event() */
                return 1;
        /* The guest's bytes exactly as it printed them: escape sequences, CRs and all. */
        if ((chunk->data.len > 0 && fwrite(chunk->data.data, 1, chunk->data.len, stdout) != chunk->data.len) ||
            fflush(stdout) == EOF) {
                /* The reader went away (logs | head): end quietly. */
                *write_error = errno > 0 ? errno : EIO;
                return 1;
        }
        return 0;
}

static int verb_logs(const Verb *verb, int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "follow", no_argument, NULL, 'f' },
                { "tail", required_argument, NULL, 'n' },
                {},
        };
        Hydra__V1__ConsoleLogRequest req = HYDRA__V1__CONSOLE_LOG_REQUEST__INIT;
        LogsArgs a = {};
        RpcStatus status;
        bool help_shown;
        int r, write_error = 0;

        r = verb_getopt_short(verb, argc, argv, "f", options, handle_logs_option, &a, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, true, &req.role);
        if (r != 0)
                return r;
        if (arg_json)
                return usage_error(verb, "--json is not supported: the log is the guest's bytes, printed as they "
                                   "are");

        req.follow = a.follow;
        req.tail_bytes = a.tail_bytes;
        if (a.follow)
                stream_catch_signals();
        r = rpc_call_server_stream(get_client(), METHOD("ConsoleLog"), &req.base,
                                   &hydra__v1__console_chunk__descriptor,
                                   deadline_ms(a.follow ? RPC_NO_DEADLINE : DEADLINE_LOGS_MS), on_log_chunk,
                                   a.follow ? stream_check_interrupted : NULL, &write_error, &status);
        if (write_error == EPIPE)
                stdout_gone = true;
        else if (write_error != 0) {
                fprintf(stderr, "hydractl: cannot write to standard output: %s\n", strerror(write_error));
                return EXIT_RPC;
        }
        if (r < 0)
                return rpc_error(&status);
        if (r == 2 && !a.follow) {
                /* Without -f the deadline cut the log short: say so. With -f it is the global --timeout. */
                fprintf(stderr, "hydractl: DEADLINE_EXCEEDED: the log was not complete after %" PRId64 " s\n",
                        deadline_ms(DEADLINE_LOGS_MS) / SEC_MS);
                return EXIT_RPC;
        }
        return 0;
}

/* --- console --- */

static int handle_console_option(const Verb *verb, int c, const char *arg, void *userdata) {
        double *linger = userdata;
        char *end;

        if (c != 'l')
                return EXIT_USAGE;
        errno = 0;
        *linger = strtod(arg, &end);
        if (errno != 0 || end == arg || *end != '\0' || !isfinite(*linger) || *linger > 1e7 ||
            (*linger < 0 && *linger != -1))
                return usage_error(verb, "--linger: '%s' is not a number of seconds (0 or more, or -1: until "
                                   "hydrad closes the console)", arg);
        return 0;
}

static int verb_console(const Verb *verb, int argc, char *argv[]) {
        static const struct option options[] = {
                COMMON_OPTIONS,
                { "linger", required_argument, NULL, 'l' },
                {},
        };
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        _cleanup_free_ char *path = NULL;
        Hydra__V1__Vm *vm = NULL;
        double linger = 1;
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, options, handle_console_option, &linger, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, true, &req.role);
        if (r != 0)
                return r;
        if (arg_json)
                return usage_error(verb, "--json is not supported: the console is a terminal");

        r = call_unary(METHOD("GetVm"), &req, &hydra__v1__vm__descriptor, DEADLINE_DEFAULT_MS, &vm);
        if (r != 0)
                return r;
        path = isempty(vm->console_socket) ? NULL : strdup(vm->console_socket);
        r = !isempty(vm->console_socket) && !path ? -ENOMEM : 0;
        hydra__v1__vm__free_unpacked(vm, NULL);
        if (r < 0) {
                fprintf(stderr, "hydractl: out of memory\n");
                return EXIT_RPC;
        }
        if (!path) {
                fprintf(stderr, "hydractl: VM '%s' has no console socket (it is not running under this hydrad)\n",
                        role_to_name(req.role));
                return EXIT_RPC;
        }
        /* The console is a plain socket, not gRPC: the channel is not needed any more. */
        client = rpc_client_free(client);
        return console_attach(path, role_to_name(req.role), linger);
}

/* --- plan, health --- */

static int verb_plan(const Verb *verb, int argc, char *argv[]) {
        Hydra__V1__PlanVmRequest req = HYDRA__V1__PLAN_VM_REQUEST__INIT;
        Hydra__V1__PlanVmResponse *plan = NULL;
        bool help_shown;
        int r;

        r = verb_getopt(verb, argc, argv, (const struct option[]) { COMMON_OPTIONS, {} }, NULL, NULL, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_role_args(verb, argc, argv, true, &req.role);
        if (r != 0)
                return r;

        r = call_unary(METHOD("PlanVm"), &req, &hydra__v1__plan_vm_response__descriptor, DEADLINE_DEFAULT_MS,
                       &plan);
        if (r != 0)
                return r;
        if (arg_json) {
                json_auto_t *j = json_from_plan(req.role, plan);
                r = print_json(stdout, j) < 0 ? EXIT_RPC : 0;
        } else
                print_plan(stdout, plan);
        hydra__v1__plan_vm_response__free_unpacked(plan, NULL);
        return r;
}

static int verb_health(const Verb *verb, int argc, char *argv[]) {
        Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
        Grpc__Health__V1__HealthCheckResponse *reply = NULL;
        const char *name;
        bool help_shown, serving;
        int r;

        r = verb_getopt(verb, argc, argv, (const struct option[]) { COMMON_OPTIONS, {} }, NULL, NULL, &help_shown);
        if (r != 0 || help_shown)
                return r;
        r = parse_no_args(verb, argc, argv);
        if (r != 0)
                return r;

        r = call_unary(HEALTH_CHECK, &req, &grpc__health__v1__health_check_response__descriptor,
                       DEADLINE_DEFAULT_MS, &reply);
        if (r != 0)
                return r;
        name = serving_status_to_name(reply->status);
        serving = reply->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        grpc__health__v1__health_check_response__free_unpacked(reply, NULL);

        if (arg_json) {
                json_auto_t *j = json_pack("{s:s}", "status", name);
                if (print_json(stdout, j) < 0)
                        return EXIT_RPC;
        } else
                printf("%s\n", name);
        /* A probe's answer: anything but SERVING fails. */
        return serving ? 0 : EXIT_RPC;
}

/* --- the table --- */

static const Verb verbs[] = {
        { "register", "ROLE --spec FILE|--from-env [--preset NAME] [--set SECTION.KEY=VALUE]... "
          "[--apply-on-next-start]",
          "Validate and store the VM spec of ROLE, read from an INI file (see SPEC-FORMAT.md), or built from\n"
          "      start-vm.sh's environment variables.",
          "  --spec FILE               the spec file; relative paths in it are relative to its directory\n"
          "  --from-env                the spec start-vm.sh would run, from its environment variables and defaults\n"
          "  --preset NAME             with --from-env: first apply the defaults of a wrapper script: host\n"
          "                            (run-host.sh), isolated, isolated-bare, isolated-crypt\n"
          "  --set SECTION.KEY=VALUE   override a key (repeatable keys such as network.forward add one; an empty\n"
          "                            value resets the key); relative paths are relative to the current directory;\n"
          "                            secrets (passwords, tokens) are refused: put them in the file (mode 0600)\n"
          "  --apply-on-next-start     replace the spec of a VM that is running; it applies at its next start\n",
          verb_register, false },
        { "start", "ROLE|--all [--wait running|ready] [--timeout SEC]",
          "Prepare and launch the VM; return once QEMU runs and answers QMP (or, with --wait ready, once the\n"
          "      guest's readiness probe passes). The preparation's progress (downloads, disk, seed) is shown on\n"
          "      stderr: a bar on a terminal, else a line per step. A VM whose spec says start_after starts once\n"
          "      that VM is ready, and that VM is started first.",
          "  --all                     every registered VM, each after the one it starts after\n"
          "  --wait running            return once QEMU runs and answers QMP (the default)\n"
          "  --wait ready              return once the readiness probe ([supervision] probe) passes\n"
          "  --timeout SEC             give up the start after SEC seconds (default: no limit)\n",
          verb_start, false },
        { "stop", "ROLE|--all [--force] [--timeout SEC]",
          "Stop the VM: ACPI power-down, then QMP quit, SIGTERM, SIGKILL. A VM that starts after it keeps\n"
          "      running (a warning says so): stop it first, or use --all.",
          "  --all                     every registered VM, a VM that starts after another before that one\n"
          "  --force                   skip the ACPI power-down step\n"
          "  --timeout SEC             how long the guest gets to power off (default: [supervision] stop_timeout,\n"
          "                            else hydrad's stop_timeout, 60 s)\n",
          verb_stop, false },
        { "destroy", "ROLE [--keep-cache]",
          "Stop the VM (forced) and remove its disk, seed, runtime state and registration.",
          "  --keep-cache              keep downloaded base images\n",
          verb_destroy, false },
        { "status", "[ROLE]", "Show the state of one VM (key: value lines), or of every VM (like list).", NULL,
          verb_status, false },
        { "list", "", "Show every registered VM, one row each.", NULL, verb_list, false },
        { "watch", "[ROLE]",
          "Print events (state changes, progress, notices, QMP events) as they happen, one line each (--json:\n"
          "      one object each), until interrupted (exit 0), the global --timeout passes (exit 0), or hydrad goes\n"
          "      away (exit 1).", NULL,
          verb_watch, false },
        { "logs", "ROLE [-f|--follow] [--tail BYTES]",
          "Print the serial console log (rotated files first) as the guest wrote it; with -f, then what the\n"
          "      guest prints, until interrupted (exit 0).",
          "  -f, --follow              keep printing what the guest prints next\n"
          "  --tail BYTES              only the last BYTES of the stored log (K, M or G may follow: 64K)\n",
          verb_logs, false },
        { "console", "ROLE [--linger SEC]",
          "Attach to the serial console (Ctrl-] detaches).",
          "  --linger SEC              standard input not a terminal: it is sent to the guest; after its end, keep\n"
          "                            printing the guest's output this long (default: 1; 0: not at all; -1: until\n"
          "                            hydrad closes the console), e.g.\n"
          "                            printf 'uname -a\\n' | hydractl console host --linger 2\n",
          verb_console, false },
        { "plan", "ROLE", "Show the QEMU command line and the files a start would use, starting nothing.", NULL,
          verb_plan, false },
        { "health", "", "Ask grpc.health.v1.Health/Check; print SERVING, NOT_SERVING...; exit 1 unless SERVING.",
          NULL, verb_health, false },
        { "spec-dump", "[--spec FILE | --from-env [--preset NAME]] [--set SECTION.KEY=VALUE]...",
          "Print the spec a register would send, as JSON, without contacting hydrad.",
          "  --spec FILE               the spec file\n"
          "  --from-env                start-vm.sh's environment, as for register\n"
          "  --preset NAME             with --from-env: a wrapper script's defaults\n"
          "  --set SECTION.KEY=VALUE   override a key, as for register\n",
          verb_spec_dump, true },
};

static const Verb *verb_find(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (streq(verbs[i].name, name))
                        return &verbs[i];
        return NULL;
}

static void help(void) {
        printf("Usage: hydractl [--socket PATH] [--json] [--timeout SEC] COMMAND [ARGS...]\n"
               "\n"
               "Drive hydrad, the Hydra VM supervisor, over its gRPC socket.\n"
               "\n"
               "Commands:\n");
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (!verbs[i].hidden)
                        printf("  %s%s%s\n      %s\n", verbs[i].name, isempty(verbs[i].args) ? "" : " ",
                               verbs[i].args, verbs[i].summary);
        printf("\n"
               "ROLE is host or isolated.\n"
               "\n"
               "Global options (before COMMAND):\n"
               "  -s, --socket PATH   hydrad's socket (default: $HYDRA_SOCKET, else " DEFAULT_SOCKET ")\n"
               "  -j, --json          print JSON: one object per VM or event, one per line\n"
               "  -t, --timeout SEC   deadline of the call (default: 30 s; start: 600 s (--wait ready: 1800 s), or\n"
               "                      its --timeout + 30 s; stop: its --timeout (else the spec's stop_timeout, else\n"
               "                      60) + 30 s; logs: 300 s; watch and logs -f: none, i.e. follow for SEC\n"
               "                      seconds)\n"
               "  -h, --help          show this help ('hydractl COMMAND --help' for one command)\n"
               "\n"
               "Exit status: 0 success; 1 the call failed (hydractl: STATUS_CODE: message); 2 bad usage or spec.\n");
}

int main(int argc, char *argv[]) {
        static const struct option options[] = {
                { "socket", required_argument, NULL, 's' },
                { "json", no_argument, NULL, 'j' },
                { "timeout", required_argument, NULL, 't' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        const Verb *verb;
        double seconds;
        char *end;
        int c, r;

        opterr = 0;
        /* '+': stop at COMMAND; its own options are parsed by the verb. */
        while ((c = getopt_long(argc, argv, "+:s:jt:h", options, NULL)) >= 0)
                switch (c) {
                case 's':
                        if (isempty(optarg))
                                return usage_error(NULL, "--socket: empty path");
                        arg_socket = optarg;
                        break;
                case 'j':
                        arg_json = true;
                        break;
                case 't':
                        errno = 0;
                        seconds = strtod(optarg, &end);
                        if (errno != 0 || end == optarg || *end != '\0' || !isfinite(seconds) || seconds <= 0 ||
                            seconds > 1e7)
                                return usage_error(NULL, "--timeout: '%s' is not a positive number of seconds",
                                                   optarg);
                        arg_timeout_ms = (int64_t) (seconds * 1000 + 0.999); /* round up: 0.0001 is not 0 */
                        break;
                case 'h':
                        help();
                        return 0;
                default:
                        return option_error(NULL, c, argv);
                }

        if (optind >= argc)
                return usage_error(NULL, "missing COMMAND");
        verb = verb_find(argv[optind]);
        if (!verb)
                return usage_error(NULL, "unknown command '%s'", argv[optind]);

        if (!arg_socket) {
                const char *e = getenv("HYDRA_SOCKET");
                arg_socket = isempty(e) ? DEFAULT_SOCKET : e;
        }
        /* gRPC would only say "Failed to create secure client channel". */
        if (strlen(arg_socket) >= sizeof_field(struct sockaddr_un, sun_path))
                return usage_error(NULL, "socket path '%s' is too long (%zu bytes, the limit is %zu)", arg_socket,
                                   strlen(arg_socket), sizeof_field(struct sockaddr_un, sun_path) - 1);

        /* A closed stdout is a write error, not a silent death. */
        (void) signal(SIGPIPE, SIG_IGN);

        r = verb->run(verb, argc - optind, argv + optind);

        client = rpc_client_free(client);
        if (fflush(stdout) == EOF && r == 0 && !stdout_gone) {
                fprintf(stderr, "hydractl: cannot write to standard output: %m\n");
                r = EXIT_RPC;
        }
        return r;
}
