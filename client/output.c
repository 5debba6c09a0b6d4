/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdbool.h>
#include <string.h>
#include <time.h>

#include "macro.h"
#include "output.h"
#include "specfile.h"

static const char *const role_table[] = {
        [HYDRA__V1__ROLE__ROLE_HOST] = "host",
        [HYDRA__V1__ROLE__ROLE_ISOLATED] = "isolated",
};

static const char *const vm_state_table[] = {
        [HYDRA__V1__VM_STATE__VM_STATE_UNSPECIFIED] = "unspecified",
        [HYDRA__V1__VM_STATE__VM_STATE_DEFINED] = "defined",
        [HYDRA__V1__VM_STATE__VM_STATE_PREPARING] = "preparing",
        [HYDRA__V1__VM_STATE__VM_STATE_STARTING] = "starting",
        [HYDRA__V1__VM_STATE__VM_STATE_RUNNING] = "running",
        [HYDRA__V1__VM_STATE__VM_STATE_STOPPING] = "stopping",
        [HYDRA__V1__VM_STATE__VM_STATE_STOPPED] = "stopped",
        [HYDRA__V1__VM_STATE__VM_STATE_FAILED] = "failed",
        [HYDRA__V1__VM_STATE__VM_STATE_CRASHED] = "crashed",
};

static const char *const serving_status_table[] = {
        [GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__UNKNOWN] = "UNKNOWN",
        [GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING] = "SERVING",
        [GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING] = "NOT_SERVING",
        [GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN] = "SERVICE_UNKNOWN",
};

#define TABLE_LOOKUP(table, i, fallback) \
        ((int) (i) >= 0 && (size_t) (i) < ELEMENTSOF(table) && (table)[i] ? (table)[i] : (fallback))

const char *role_to_name(Hydra__V1__Role role) {
        return TABLE_LOOKUP(role_table, role, "-");
}

Hydra__V1__Role role_from_name(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(role_table); i++)
                if (role_table[i] && streq(role_table[i], name))
                        return (Hydra__V1__Role) i;
        return HYDRA__V1__ROLE__ROLE_UNSPECIFIED;
}

const char *vm_state_to_name(Hydra__V1__VmState state) {
        return TABLE_LOOKUP(vm_state_table, state, "unspecified");
}

const char *serving_status_to_name(Grpc__Health__V1__HealthCheckResponse__ServingStatus s) {
        return TABLE_LOOKUP(serving_status_table, s, "UNKNOWN");
}

/* --- JSON --- */

/* Empty strings are null: "not set" reads the same for every field. Invalid UTF-8 (which protobuf-c does not
 * check) is shown as null rather than failing the whole object. */
static json_t *json_string_or_null(const char *s) {
        json_t *j;

        if (isempty(s))
                return json_null();
        j = json_string(s);
        return j ?: json_null();
}

static json_t *json_from_forward(const Hydra__V1__PortForward *fw, bool effective) {
        /* In a Vm (effective) an empty address or protocol means the documented default; in a spec it is what
         * will be sent. */
        return json_pack("{s:o, s:i, s:i, s:o}",
                         "host_addr", effective && isempty(fw->host_addr) ? json_string("127.0.0.1")
                                                                          : json_string_or_null(fw->host_addr),
                         "host_port", (json_int_t) fw->host_port,
                         "guest_port", (json_int_t) fw->guest_port,
                         "protocol", effective && isempty(fw->protocol) ? json_string("tcp")
                                                                        : json_string_or_null(fw->protocol));
}

static json_t *json_from_forwards(Hydra__V1__PortForward *const *fws, size_t n, bool effective) {
        json_t *a = json_array();

        for (size_t i = 0; a && i < n; i++)
                if (json_array_append_new(a, json_from_forward(fws[i], effective)) < 0) {
                        json_decref(a);
                        return NULL;
                }
        return a;
}

/* Secrets (passwords, tokens) are never shown: "(set)" or null. hydrad's replies carry "(set)" already. */
static json_t *json_secret(const char *s) {
        return isempty(s) ? json_null() : json_string("(set)");
}

static json_t *json_from_strv(char *const *strv, size_t n) {
        json_t *a = json_array();

        for (size_t i = 0; a && i < n; i++)
                (void) json_array_append_new(a, json_string_or_null(strv[i]));
        return a;
}

static json_t *json_from_source(const Hydra__V1__Source *s) {
        if (!s)
                return json_null();
        return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
                         "url", json_string_or_null(s->url),
                         "checksum", json_string_or_null(s->checksum),
                         "sums_url", json_string_or_null(s->sums_url),
                         "user", json_string_or_null(s->user),
                         "password", json_secret(s->password),
                         "token", json_secret(s->token),
                         "token_header", json_string_or_null(s->token_header));
}

static json_t *json_from_spec_parts(const Hydra__V1__VmSpec *spec, json_t *j) {
        const Hydra__V1__BareKernel *b = spec->bare;
        const Hydra__V1__Guest *g = spec->guest;
        const Hydra__V1__Software *sw = spec->software;
        const Hydra__V1__Network *n = spec->network;
        const Hydra__V1__Shares *sh = spec->shares;
        const Hydra__V1__Devices *d = spec->devices;
        const Hydra__V1__Supervision *sv = spec->supervision;
        const Hydra__V1__Resources *rs = spec->resources;
        json_t *extra;
        int r = 0;

        if (!j)
                return NULL;
        r |= json_object_set_new(j, "disk_size_gib", json_integer(spec->disk_size_gib));
        r |= json_object_set_new(j, "firmware", !spec->firmware ? json_null() :
                                 json_pack("{s:o, s:o}", "code", json_string_or_null(spec->firmware->code),
                                           "vars", json_string_or_null(spec->firmware->vars)));
        r |= json_object_set_new(j, "image", json_from_source(spec->image));
        r |= json_object_set_new(j, "keep_pristine", json_boolean(spec->keep_pristine));
        r |= json_object_set_new(j, "reuse_disk_on_change", json_boolean(spec->reuse_disk_on_change));
        r |= json_object_set_new(j, "bare", !b ? json_null() :
                                 json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:b}",
                                           "artifact", json_from_source(b->artifact),
                                           "dir", json_string_or_null(b->dir),
                                           "kernel", json_string_or_null(b->kernel),
                                           "kernel_version", json_string_or_null(b->kernel_version),
                                           "initrd", json_string_or_null(b->initrd),
                                           "rootfs", json_string_or_null(b->rootfs),
                                           "encrypted_tools", (int) b->encrypted_tools));
        r |= json_object_set_new(j, "guest", !g ? json_null() :
                                 json_pack("{s:o, s:o, s:o, s:o, s:o}",
                                           "username", json_string_or_null(g->username),
                                           "password", json_secret(g->password),
                                           "password_hash", json_string_or_null(g->password_hash),
                                           "hostname", json_string_or_null(g->hostname),
                                           "ssh_authorized_keys",
                                           json_from_strv(g->ssh_authorized_keys, g->n_ssh_authorized_keys)));
        r |= json_object_set_new(j, "software", !sw ? json_null() :
                                 json_pack("{s:b, s:o, s:b, s:o, s:o, s:o, s:b, s:b, s:b, s:o, s:o, s:o, s:o}",
                                           "disable_containerd_proxy", (int) sw->disable_containerd_proxy,
                                           "csi_grpc_proxy_url", json_string_or_null(sw->csi_grpc_proxy_url),
                                           "k3s_diod", (int) sw->k3s_diod,
                                           "k3s_version", json_string_or_null(sw->k3s_version),
                                           "kernel_package", json_string_or_null(sw->kernel_package),
                                           "extra_debs", json_from_strv(sw->extra_debs, sw->n_extra_debs),
                                           "reboot_after_install", (int) sw->reboot_after_install,
                                           "package_update", (int) sw->package_update,
                                           "package_upgrade", (int) sw->package_upgrade,
                                           "sandbox_image", json_string_or_null(sw->sandbox_image),
                                           "sandbox_image_url", json_string_or_null(sw->sandbox_image_url),
                                           "crismux_url", json_string_or_null(sw->crismux_url),
                                           "crismux_sha256", json_string_or_null(sw->crismux_sha256)));
        r |= json_object_set_new(j, "network", !n ? json_null() :
                                 json_pack("{s:o, s:o, s:o, s:i, s:o}",
                                           "guest_ip", json_string_or_null(n->guest_ip),
                                           "gateway", json_string_or_null(n->gateway),
                                           "dns", json_string_or_null(n->dns),
                                           "prefix_len", (json_int_t) n->prefix_len,
                                           "mac", json_string_or_null(n->mac)));
        extra = sh ? json_array() : NULL;
        for (size_t i = 0; extra && i < sh->n_extra; i++)
                (void) json_array_append_new(extra,
                                             json_pack("{s:o, s:o}",
                                                       "host_path", json_string_or_null(sh->extra[i]->host_path),
                                                       "guest_path", json_string_or_null(sh->extra[i]->guest_path)));
        r |= json_object_set_new(j, "shares", !sh ? json_null() :
                                 json_pack("{s:s, s:o, s:i, s:o}",
                                           "kubelet", kubelet_shares_to_name(sh->kubelet) ?: "unknown",
                                           "kubelet_host_dir", json_string_or_null(sh->kubelet_host_dir),
                                           "diod_port", (json_int_t) sh->diod_port,
                                           "extra", extra));
        r |= json_object_set_new(j, "devices", !d ? json_null() :
                                 json_pack("{s:b, s:i, s:b, s:i, s:s, s:i, s:o}",
                                           "vsock", (int) d->vsock,
                                           "vsock_cid", (json_int_t) d->vsock_cid,
                                           "gpu", (int) d->gpu,
                                           "gpu_vram_gib", (json_int_t) d->gpu_vram_gib,
                                           "shmem", shmem_to_name(d->shmem) ?: "unknown",
                                           "shmem_size_gib", (json_int_t) d->shmem_size_gib,
                                           "shmem_path", json_string_or_null(d->shmem_path)));
        /* The spec file's names: durations in seconds, as restart_window, stop_timeout and ready_timeout. */
        r |= json_object_set_new(j, "supervision", !sv ? json_null() :
                                 json_pack("{s:s, s:i, s:i, s:b, s:i, s:s, s:o, s:i, s:i, s:o}",
                                           "restart", restart_policy_to_name(sv->restart) ?: "unknown",
                                           "max_restarts", (json_int_t) sv->max_restarts,
                                           "restart_window", (json_int_t) sv->restart_window_seconds,
                                           "autostart", (int) sv->autostart,
                                           "stop_timeout", (json_int_t) sv->stop_timeout_seconds,
                                           "probe", probe_kind_to_name(sv->probe) ?: "unknown",
                                           "probe_pattern", json_string_or_null(sv->probe_pattern),
                                           "probe_port", (json_int_t) sv->probe_port,
                                           "ready_timeout", (json_int_t) sv->ready_timeout_seconds,
                                           "start_after", json_string_or_null(sv->start_after)));
        /* The API's numbers: percent of one CPU, bytes (0: no limit). */
        r |= json_object_set_new(j, "resources", !rs ? json_null() :
                                 json_pack("{s:i, s:I}",
                                           "cpu_quota_percent", (json_int_t) rs->cpu_quota_percent,
                                           "memory_max_bytes", (json_int_t) rs->memory_max_bytes));
        if (r != 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

json_t *json_from_vm_spec(const Hydra__V1__VmSpec *spec) {
        json_t *kernel = json_null();

        if (spec->kernel)
                kernel = json_pack("{s:o, s:o, s:o}",
                                   "kernel", json_string_or_null(spec->kernel->kernel),
                                   "initrd", json_string_or_null(spec->kernel->initrd),
                                   "cmdline", json_string_or_null(spec->kernel->cmdline));

        return json_from_spec_parts(
                spec, json_pack("{s:i, s:I, s:s, s:o, s:o, s:o, s:o, s:o, s:o}",
                                "cpus", (json_int_t) spec->cpus,
                                "memory_mib", (json_int_t) spec->memory_mib,
                                "accel", accel_to_name(spec->accel) ?: "unknown",
                                "arch", json_string_or_null(spec->arch),
                                "machine", json_string_or_null(spec->machine),
                                "cpu_model", json_string_or_null(spec->cpu_model),
                                "kernel", kernel,
                                "disk", json_string_or_null(spec->disk),
                                "forwards", json_from_forwards(spec->forwards, spec->n_forwards, false)));
}

json_t *json_from_progress(const Hydra__V1__Progress *p) {
        if (!p)
                return json_null();
        return json_pack("{s:o, s:o, s:I, s:I, s:I}",
                         "step", json_string_or_null(p->step),
                         "what", json_string_or_null(p->what),
                         "bytes", (json_int_t) p->bytes,
                         "total", (json_int_t) p->total,
                         "rate", (json_int_t) p->rate);
}

static json_t *json_from_exit(const Hydra__V1__ExitInfo *e) {
        if (!e || !e->exited)
                return json_null();
        return json_pack("{s:i, s:i, s:o, s:I}",
                         "code", (json_int_t) e->code,
                         "signal", (json_int_t) e->signal,
                         "reason", json_string_or_null(e->reason),
                         "time_unix_usec", (json_int_t) e->time_unix_usec);
}

json_t *json_from_vm(const Hydra__V1__Vm *vm) {
        json_t *j;

        j = json_pack("{s:s, s:s, s:i, s:I, s:I, s:o, s:o, s:i, s:o, s:o, s:o, s:I, s:o, s:o, s:o, s:o}",
                         "role", role_to_name(vm->role),
                         "state", vm_state_to_name(vm->state),
                         "pid", (json_int_t) vm->pid,
                         "uptime_seconds", (json_int_t) (vm->uptime_usec / 1000000),
                         "uptime_usec", (json_int_t) vm->uptime_usec,
                         "last_exit", json_from_exit(vm->last_exit),
                         "last_error", json_string_or_null(vm->last_error),
                         "restart_count", (json_int_t) vm->restart_count,
                         "console_log", json_string_or_null(vm->console_log),
                         "qmp_socket", json_string_or_null(vm->qmp_socket),
                         "forwards", json_from_forwards(vm->forwards, vm->n_forwards, true),
                         "spec_generation", (json_int_t) vm->spec_generation,
                         "spec", vm->spec ? json_from_vm_spec(vm->spec) : json_null(),
                         "progress", json_from_progress(vm->progress),
                         "disk_path", json_string_or_null(vm->disk_path),
                         "seed_path", json_string_or_null(vm->seed_path));
        /* Readiness and supervision: a second object merged in, so that each format string stays checkable. */
        if (j && json_object_update_new(j, json_pack("{s:b, s:I, s:o, s:o, s:o, s:I, s:o, s:o}",
                                                     "ready", (int) vm->ready,
                                                     "ready_since_unix_usec", (json_int_t) vm->ready_since_unix_usec,
                                                     "ready_detail", json_string_or_null(vm->ready_detail),
                                                     "console_socket", json_string_or_null(vm->console_socket),
                                                     "cri_socket", json_string_or_null(vm->cri_socket),
                                                     "next_restart_unix_usec",
                                                     (json_int_t) vm->next_restart_unix_usec,
                                                     "machine", json_string_or_null(vm->machine),
                                                     "machine_scope", json_string_or_null(vm->machine_scope))) < 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

json_t *json_from_event(const Hydra__V1__Event *event) {
        json_t *j;
        int r = 0;

        j = json_pack("{s:I, s:I, s:s}",
                      "seq", (json_int_t) event->seq,
                      "time_unix_usec", (json_int_t) event->time_unix_usec,
                      "role", role_to_name(event->role));
        if (!j)
                return NULL;

        switch (event->kind_case) {
        case HYDRA__V1__EVENT__KIND_STATE_CHANGE:
                r = json_object_update_new(j, json_pack("{s:s, s:s, s:s, s:o}",
                                                        "type", "state_change",
                                                        "from", vm_state_to_name(event->state_change->from),
                                                        "to", vm_state_to_name(event->state_change->to),
                                                        "reason", json_string_or_null(event->state_change->reason)));
                break;
        case HYDRA__V1__EVENT__KIND_QMP_EVENT: {
                /* The event's data is JSON already: embed it as such, or as a string if it does not parse. */
                json_t *data = NULL;

                if (!isempty(event->qmp_event->data_json))
                        data = json_loads(event->qmp_event->data_json, JSON_DECODE_ANY, NULL);
                if (!data)
                        data = json_string_or_null(event->qmp_event->data_json);
                r = json_object_update_new(j, json_pack("{s:s, s:o, s:o}",
                                                        "type", "qmp_event",
                                                        "name", json_string_or_null(event->qmp_event->name),
                                                        "data", data));
                break;
        }
        case HYDRA__V1__EVENT__KIND_PROGRESS:
                r = json_object_set_new(j, "type", json_string("progress"));
                if (r >= 0)
                        r = json_object_set_new(j, "progress", json_from_progress(event->progress));
                break;
        case HYDRA__V1__EVENT__KIND_NOTICE:
                r = json_object_update_new(j, json_pack("{s:s, s:o}",
                                                        "type", "notice",
                                                        "message", json_string_or_null(event->notice->message)));
                break;
        case HYDRA__V1__EVENT__KIND_READINESS:
                r = json_object_update_new(j, json_pack("{s:s, s:b, s:o}",
                                                        "type", "readiness",
                                                        "ready", (int) event->readiness->ready,
                                                        "detail", json_string_or_null(event->readiness->detail)));
                break;
        case HYDRA__V1__EVENT__KIND_LOST:
                r = json_object_update_new(j, json_pack("{s:s, s:I}",
                                                        "type", "lost",
                                                        "count", (json_int_t) event->lost->count));
                break;
        default:
                r = json_object_set_new(j, "type", json_string("unknown"));
        }
        if (r >= 0 && event->vm)
                r = json_object_set_new(j, "vm", json_from_vm(event->vm));
        if (r < 0) {
                json_decref(j);
                return NULL;
        }
        return j;
}

static char *base64_encode(const uint8_t *data, size_t len) {
        char *out;

        if (len > INT_MAX / 4 * 3 - 3)
                return NULL;
        out = malloc((len + 2) / 3 * 4 + 1);
        if (out)
                (void) EVP_EncodeBlock((unsigned char *) out, data, (int) len);
        return out;
}

/* Text if it is valid UTF-8 without NUL bytes (jansson checks UTF-8), else NULL. */
static json_t *json_text_or_null(const ProtobufCBinaryData *b) {
        if (b->len > 0 && memchr(b->data, '\0', b->len))
                return NULL;
        return json_stringn((const char *) b->data, b->len);
}

json_t *json_from_plan(Hydra__V1__Role role, const Hydra__V1__PlanVmResponse *plan) {
        json_t *argv = json_array(), *files = json_array();

        for (size_t i = 0; argv && i < plan->n_argv; i++)
                (void) json_array_append_new(argv, json_string_or_null(plan->argv[i]));

        for (size_t i = 0; files && i < plan->n_files; i++) {
                const Hydra__V1__PlannedFile *f = plan->files[i];
                json_t *text = json_text_or_null(&f->content);
                json_t *o;

                if (text)
                        o = json_pack("{s:o, s:I, s:o}", "path", json_string_or_null(f->path), "size",
                                      (json_int_t) f->content.len, "content", text);
                else {
                        _cleanup_free_ char *b64 = base64_encode(f->content.data, f->content.len);
                        o = json_pack("{s:o, s:I, s:s?}", "path", json_string_or_null(f->path), "size",
                                      (json_int_t) f->content.len, "content_base64", b64);
                }
                (void) json_array_append_new(files, o);
        }
        json_t *reasons = json_array();

        for (size_t i = 0; reasons && i < plan->n_qemu_root_reasons; i++)
                (void) json_array_append_new(reasons, json_string_or_null(plan->qemu_root_reasons[i]));
        return json_pack("{s:s, s:o, s:o, s:o, s:o}", "role", role_to_name(role), "argv", argv, "files", files,
                         "qemu_user", json_string_or_null(plan->qemu_user), "qemu_root_reasons",
                         reasons ? reasons : json_null());
}

int print_json(FILE *f, const json_t *j) {
        if (!j)
                return -ENOMEM;
        if (json_dumpf(j, f, JSON_COMPACT) < 0 || fputc('\n', f) == EOF || fflush(f) == EOF)
                return errno > 0 ? -errno : -EIO;
        return 0;
}

/* --- human --- */

static void format_duration(char *buf, size_t size, uint64_t usec) {
        uint64_t s = usec / 1000000;

        if (s < 60)
                snprintf(buf, size, "%" PRIu64 "s", s);
        else if (s < 3600)
                snprintf(buf, size, "%" PRIu64 "m %02" PRIu64 "s", s / 60, s % 60);
        else if (s < 86400)
                snprintf(buf, size, "%" PRIu64 "h %02" PRIu64 "m", s / 3600, s / 60 % 60);
        else
                snprintf(buf, size, "%" PRIu64 "d %02" PRIu64 "h", s / 86400, s / 3600 % 24);
}

static void format_time(char *buf, size_t size, int64_t unix_usec, bool with_ms) {
        time_t t = (time_t) (unix_usec / 1000000);
        struct tm tm;
        size_t n;

        if (!localtime_r(&t, &tm) || (n = strftime(buf, size, "%Y-%m-%d %H:%M:%S", &tm)) == 0) {
                snprintf(buf, size, "@%" PRId64, unix_usec);
                return;
        }
        if (with_ms)
                snprintf(buf + n, size - n, ".%03d", (int) (unix_usec / 1000 % 1000));
}

/* "guest-shutdown, exit code 0" or "sigkill, signal KILL"; "never" when QEMU has not exited yet. */
static void format_exit(char *buf, size_t size, const Hydra__V1__ExitInfo *e) {
        const char *reason;

        if (!e || !e->exited) {
                snprintf(buf, size, "never");
                return;
        }
        reason = isempty(e->reason) ? "exited" : e->reason;
        if (e->signal > 0) {
                const char *abbrev = sigabbrev_np(e->signal);
                if (abbrev)
                        snprintf(buf, size, "%s, signal SIG%s", reason, abbrev);
                else
                        snprintf(buf, size, "%s, signal %d", reason, e->signal);
        } else
                snprintf(buf, size, "%s, exit code %d", reason, e->code);
}

static void format_forward(char *buf, size_t size, const Hydra__V1__PortForward *fw) {
        snprintf(buf, size, "%s:%u->%u%s", isempty(fw->host_addr) ? "127.0.0.1" : fw->host_addr, fw->host_port,
                 fw->guest_port, streq(strempty(fw->protocol), "udp") ? "/udp" : "");
}

/* Comma-separated, or "-". Returns a malloc'd string or NULL. */
static char *format_forwards(Hydra__V1__PortForward *const *fws, size_t n) {
        char *s = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&s, &len);

        if (!f)
                return NULL;
        if (n == 0)
                fputs("-", f);
        for (size_t i = 0; i < n; i++) {
                char one[128];
                format_forward(one, sizeof(one), fws[i]);
                fprintf(f, "%s%s", i > 0 ? ", " : "", one);
        }
        if (fclose(f) != 0) {
                free(s);
                return NULL;
        }
        return s;
}

void format_bytes(char *buf, size_t size, uint64_t bytes) {
        static const char *const units[] = { "KiB", "MiB", "GiB", "TiB", "PiB" };
        double v = (double) bytes;
        size_t u = 0;

        if (bytes < 1024) {
                snprintf(buf, size, "%" PRIu64 " B", bytes);
                return;
        }
        v /= 1024;
        while (v >= 1024 && u + 1 < ELEMENTSOF(units)) {
                v /= 1024;
                u++;
        }
        snprintf(buf, size, "%.1f %s", v, units[u]);
}

const char *progress_what_short(const char *what) {
        const char *slash;
        size_t n;

        if (isempty(what))
                return "";
        /* The last path element of a path or URL; a URL's query (if any) stays, it may be all there is. */
        n = strlen(what);
        while (n > 1 && what[n - 1] == '/')
                n--;
        slash = memrchr(what, '/', n - 1);
        return slash ? slash + 1 : what;
}

void format_progress(char *buf, size_t size, const Hydra__V1__Progress *p) {
        char done[32], total[32], rate[32];
        int n;

        format_bytes(done, sizeof(done), p->bytes);
        n = snprintf(buf, size, "%s%s%s", isempty(p->step) ? "preparing" : p->step, isempty(p->what) ? "" : " ",
                     strempty(p->what));
        if (n < 0 || (size_t) n >= size)
                return;
        if (p->total > 0) {
                format_bytes(total, sizeof(total), p->total);
                n += snprintf(buf + n, size - (size_t) n, ": %u%% (%s of %s", (unsigned) (p->bytes > p->total ? 100 :
                              p->bytes * 100 / p->total), done, total);
        } else if (p->bytes > 0)
                n += snprintf(buf + n, size - (size_t) n, ": %s (", done);
        else
                return;
        if (n < 0 || (size_t) n >= size)
                return;
        if (p->rate > 0) {
                format_bytes(rate, sizeof(rate), p->rate);
                n += snprintf(buf + n, size - (size_t) n, ", %s/s", rate);
        }
        if (n >= 0 && (size_t) n < size)
                snprintf(buf + n, size - (size_t) n, ")");
}

/* Prints s, continuation lines indented by indent columns (QEMU's stderr lines in last_error). */
static void print_indented(FILE *f, const char *s, int indent) {
        for (const char *p = s; *p; p++) {
                fputc(*p, f);
                if (*p == '\n' && p[1] != '\0')
                        fprintf(f, "%*s", indent, "");
        }
}

static void print_oneline(FILE *f, const char *s);

/* "yes", "no" or "-": the probe's verdict means something only while QEMU runs. */
static const char *ready_word(const Hydra__V1__Vm *vm) {
        if (vm->state != HYDRA__V1__VM_STATE__VM_STATE_RUNNING)
                return "-";
        return vm->ready ? "yes" : "no";
}

void print_vm_line(FILE *f, const Hydra__V1__Vm *vm) {
        char exit_info[256];

        fprintf(f, "%s: %s", role_to_name(vm->role), vm_state_to_name(vm->state));
        if (vm->pid > 0)
                fprintf(f, " (pid %d%s)", (int) vm->pid,
                        vm->ready && vm->state == HYDRA__V1__VM_STATE__VM_STATE_RUNNING ? ", ready" : "");
        else if (vm->state == HYDRA__V1__VM_STATE__VM_STATE_FAILED && !isempty(vm->last_error)) {
                fputs(" (", f);
                print_indented(f, vm->last_error, 2);
                fputs(")", f);
        } else if (vm->last_exit && vm->last_exit->exited &&
                   (vm->state == HYDRA__V1__VM_STATE__VM_STATE_STOPPED ||
                    vm->state == HYDRA__V1__VM_STATE__VM_STATE_CRASHED ||
                    vm->state == HYDRA__V1__VM_STATE__VM_STATE_FAILED)) {
                format_exit(exit_info, sizeof(exit_info), vm->last_exit);
                fprintf(f, " (%s)", exit_info);
        }
        fputc('\n', f);
}

void print_vm_block(FILE *f, const Hydra__V1__Vm *vm) {
        _cleanup_free_ char *forwards = format_forwards(vm->forwards, vm->n_forwards);
        char buf[256];

        fprintf(f, "role:            %s\n", role_to_name(vm->role));
        fprintf(f, "state:           %s\n", vm_state_to_name(vm->state));
        if (vm->pid > 0)
                fprintf(f, "pid:             %d\n", (int) vm->pid);
        else
                fprintf(f, "pid:             -\n");
        if (vm->uptime_usec > 0) {
                format_duration(buf, sizeof(buf), vm->uptime_usec);
                fprintf(f, "uptime:          %s\n", buf);
        } else
                fprintf(f, "uptime:          -\n");
        fprintf(f, "ready:           %s", ready_word(vm));
        if (vm->state == HYDRA__V1__VM_STATE__VM_STATE_RUNNING && vm->ready && vm->ready_since_unix_usec > 0) {
                format_time(buf, sizeof(buf), vm->ready_since_unix_usec, false);
                fprintf(f, " (since %s)", buf);
        } else if (vm->state == HYDRA__V1__VM_STATE__VM_STATE_RUNNING && !vm->ready && !isempty(vm->ready_detail)) {
                fputs(" (", f);
                print_oneline(f, vm->ready_detail);
                fputc(')', f);
        }
        fputc('\n', f);
        format_exit(buf, sizeof(buf), vm->last_exit);
        fprintf(f, "last exit:       %s", buf);
        if (vm->last_exit && vm->last_exit->exited && vm->last_exit->time_unix_usec > 0) {
                format_time(buf, sizeof(buf), vm->last_exit->time_unix_usec, false);
                fprintf(f, " (at %s)", buf);
        }
        fputc('\n', f);
        fputs("last error:      ", f);
        print_indented(f, isempty(vm->last_error) ? "-" : vm->last_error, 17);
        fputc('\n', f);
        fprintf(f, "restarts:        %u\n", vm->restart_count);
        if (vm->next_restart_unix_usec > 0) {
                format_time(buf, sizeof(buf), vm->next_restart_unix_usec, false);
                fprintf(f, "next restart:    %s\n", buf);
        } else
                fprintf(f, "next restart:    -\n");
        fprintf(f, "forwards:        %s\n", strempty(forwards));
        fprintf(f, "starts after:    %s\n", vm_start_after(vm) ?: "-");
        fprintf(f, "console log:     %s\n", isempty(vm->console_log) ? "-" : vm->console_log);
        fprintf(f, "qmp socket:      %s\n", isempty(vm->qmp_socket) ? "-" : vm->qmp_socket);
        fprintf(f, "console socket:  %s\n", isempty(vm->console_socket) ? "-" : vm->console_socket);
        fprintf(f, "cri socket:      %s\n", isempty(vm->cri_socket) ? "-" : vm->cri_socket);
        if (!isempty(vm->machine))
                fprintf(f, "machine:         %s (systemd-machined; scope %s)\n", vm->machine,
                        isempty(vm->machine_scope) ? "-" : vm->machine_scope);
        fprintf(f, "spec generation: %" PRIu64 "\n", vm->spec_generation);
        fprintf(f, "disk:            %s\n", isempty(vm->disk_path) ? "-" : vm->disk_path);
        fprintf(f, "seed:            %s\n", isempty(vm->seed_path) ? "-" : vm->seed_path);
        if (vm->progress && (!isempty(vm->progress->step) || vm->progress->total > 0)) {
                char progress[1024];

                format_progress(progress, sizeof(progress), vm->progress);
                fputs("progress:        ", f);
                print_oneline(f, progress);
                fputc('\n', f);
        } else
                fprintf(f, "progress:        -\n");
}

const char *vm_start_after(const Hydra__V1__Vm *vm) {
        if (!vm->spec || !vm->spec->supervision || isempty(vm->spec->supervision->start_after))
                return NULL;
        return vm->spec->supervision->start_after;
}

void print_vm_table(FILE *f, Hydra__V1__Vm *const *vms, size_t n_vms) {
        enum { COL_ROLE, COL_STATE, COL_READY, COL_PID, COL_UPTIME, COL_RESTARTS, COL_EXIT, COL_AFTER, COL_FORWARDS,
               _COL_MAX };
        static const char *const header[_COL_MAX] = { "ROLE", "STATE", "READY", "PID", "UPTIME", "RESTARTS",
                                                      "LAST EXIT", "STARTS AFTER", "FORWARDS" };
        int width[_COL_MAX];
        char cells[n_vms + 1][_COL_MAX][256];

        for (size_t c = 0; c < _COL_MAX; c++) {
                snprintf(cells[0][c], sizeof(cells[0][c]), "%s", header[c]);
                width[c] = (int) strlen(header[c]);
        }
        for (size_t i = 0; i < n_vms; i++) {
                const Hydra__V1__Vm *vm = vms[i];
                char (*row)[256] = cells[i + 1];
                _cleanup_free_ char *forwards = format_forwards(vm->forwards, vm->n_forwards);

                snprintf(row[COL_ROLE], 256, "%s", role_to_name(vm->role));
                snprintf(row[COL_STATE], 256, "%s", vm_state_to_name(vm->state));
                snprintf(row[COL_READY], 256, "%s", ready_word(vm));
                if (vm->pid > 0)
                        snprintf(row[COL_PID], 256, "%d", (int) vm->pid);
                else
                        snprintf(row[COL_PID], 256, "-");
                if (vm->uptime_usec > 0)
                        format_duration(row[COL_UPTIME], 256, vm->uptime_usec);
                else
                        snprintf(row[COL_UPTIME], 256, "-");
                snprintf(row[COL_RESTARTS], 256, "%u", vm->restart_count);
                format_exit(row[COL_EXIT], 256, vm->last_exit);
                snprintf(row[COL_AFTER], 256, "%s", vm_start_after(vm) ?: "-");
                snprintf(row[COL_FORWARDS], 256, "%s", strempty(forwards));
                for (size_t c = 0; c < _COL_MAX; c++) {
                        int w = (int) strlen(row[c]);
                        if (w > width[c])
                                width[c] = w;
                }
        }
        for (size_t i = 0; i <= n_vms; i++) {
                for (size_t c = 0; c < _COL_MAX; c++)
                        if (c + 1 < _COL_MAX)
                                fprintf(f, "%-*s  ", width[c], cells[i][c]);
                        else
                                fprintf(f, "%s\n", cells[i][c]);
        }
        for (size_t i = 0; i < n_vms; i++)
                if (!isempty(vms[i]->last_error)) {
                        fprintf(f, "%s: last error: ", role_to_name(vms[i]->role));
                        print_indented(f, vms[i]->last_error, 2);
                        fputc('\n', f);
                }
}

/* Newlines become spaces: watch prints exactly one line per event. */
static void print_oneline(FILE *f, const char *s) {
        for (const char *p = s; *p; p++)
                fputc(*p == '\n' || *p == '\r' ? ' ' : *p, f);
}

void print_event_line(FILE *f, const Hydra__V1__Event *event) {
        char when[64];

        format_time(when, sizeof(when), event->time_unix_usec, true);
        fprintf(f, "%s %s: ", when, role_to_name(event->role));
        switch (event->kind_case) {
        case HYDRA__V1__EVENT__KIND_STATE_CHANGE:
                fprintf(f, "%s -> %s", vm_state_to_name(event->state_change->from),
                        vm_state_to_name(event->state_change->to));
                if (!isempty(event->state_change->reason)) {
                        fputs(" (", f);
                        print_oneline(f, event->state_change->reason);
                        fputc(')', f);
                }
                if (event->vm && event->vm->pid > 0 &&
                    event->state_change->to == HYDRA__V1__VM_STATE__VM_STATE_RUNNING)
                        fprintf(f, ", pid %d", (int) event->vm->pid);
                break;
        case HYDRA__V1__EVENT__KIND_QMP_EVENT:
                fputs("QMP ", f);
                print_oneline(f, strempty(event->qmp_event->name));
                if (!isempty(event->qmp_event->data_json) && !streq(event->qmp_event->data_json, "{}")) {
                        fputc(' ', f);
                        print_oneline(f, event->qmp_event->data_json);
                }
                break;
        case HYDRA__V1__EVENT__KIND_PROGRESS: {
                char progress[1024];

                format_progress(progress, sizeof(progress), event->progress);
                print_oneline(f, progress);
                break;
        }
        case HYDRA__V1__EVENT__KIND_NOTICE:
                fputs("notice: ", f);
                print_oneline(f, strempty(event->notice->message));
                break;
        case HYDRA__V1__EVENT__KIND_READINESS:
                if (event->readiness->ready)
                        fputs("ready", f);
                else {
                        fputs("not ready", f);
                        if (!isempty(event->readiness->detail)) {
                                fputs(": ", f);
                                print_oneline(f, event->readiness->detail);
                        }
                }
                break;
        case HYDRA__V1__EVENT__KIND_LOST:
                fprintf(f, "lost %" PRIu64 " event%s", event->lost->count, event->lost->count == 1 ? "" : "s");
                break;
        default:
                fprintf(f, "event #%" PRIu64, event->seq);
        }
        /* One line per event, whatever the strings hold. */
        fputc('\n', f);
}

void print_plan(FILE *f, const Hydra__V1__PlanVmResponse *plan) {
        if (!isempty(plan->qemu_user)) {
                fprintf(f, "# QEMU runs as %s%s\n", plan->qemu_user,
                        plan->n_qemu_root_reasons > 0 ? ", not as hydrad.conf's qemu_user, because:" : "");
                for (size_t i = 0; i < plan->n_qemu_root_reasons; i++)
                        fprintf(f, "#   %s\n", plan->qemu_root_reasons[i]);
        }
        for (size_t i = 0; i < plan->n_argv; i++) {
                const char *a = plan->argv[i];

                if (a[0] == '-' && i + 1 < plan->n_argv && plan->argv[i + 1][0] != '-') {
                        fprintf(f, "%s %s\n", a, plan->argv[i + 1]);
                        i++;
                } else
                        fprintf(f, "%s\n", a);
        }
        for (size_t i = 0; i < plan->n_files; i++) {
                const Hydra__V1__PlannedFile *pf = plan->files[i];
                json_t *text = json_text_or_null(&pf->content);

                fprintf(f, "\n# file %s (%zu bytes)\n", strempty(pf->path), pf->content.len);
                if (!text) {
                        fprintf(f, "# (binary content not shown; use --json)\n");
                        continue;
                }
                json_decref(text);
                if (pf->content.len > 0) {
                        fwrite(pf->content.data, 1, pf->content.len, f);
                        if (pf->content.data[pf->content.len - 1] != '\n')
                                fputc('\n', f);
                }
        }
}
