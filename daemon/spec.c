/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "macro.h"
#include "spec.h"

static const char *const role_table[_ROLE_MAX] = {
        [ROLE_HOST] = "host",
        [ROLE_ISOLATED] = "isolated",
};
DEFINE_STRING_TABLE_LOOKUP(role, Role, _ROLE_MAX);

static const char *const accel_table[_ACCEL_MAX] = {
        [ACCEL_AUTO] = "auto",
        [ACCEL_KVM] = "kvm",
        [ACCEL_TCG] = "tcg",
};
DEFINE_STRING_TABLE_LOOKUP(accel, Accel, _ACCEL_MAX);

static const char *const arch_table[_ARCH_MAX] = {
        [ARCH_X86_64] = "x86_64",
        [ARCH_AARCH64] = "aarch64",
};
DEFINE_STRING_TABLE_LOOKUP(arch, Arch, _ARCH_MAX);

static const char *const forward_protocol_table[_FORWARD_PROTOCOL_MAX] = {
        [FORWARD_TCP] = "tcp",
        [FORWARD_UDP] = "udp",
};
DEFINE_STRING_TABLE_LOOKUP(forward_protocol, ForwardProtocol, _FORWARD_PROTOCOL_MAX);

#define SPEC_DEFAULT_HOST_ADDR "127.0.0.1"
#define SPEC_MAX_PATH 4095U    /* PATH_MAX - 1 */
#define SPEC_MAX_CMDLINE 4096U
#define SPEC_MAX_MACHINE 128U
#define SPEC_MAX_CPU_MODEL 1024U

/* The longest value quoted in an error message, before escaping; HydraError's buffer is 1 KiB. */
#define QUOTE_MAX 96U

void vm_spec_done(VmSpec *spec) {
        if (!spec)
                return;

        free(spec->machine);
        free(spec->cpu_model);
        free(spec->kernel);
        free(spec->initrd);
        free(spec->cmdline);
        free(spec->disk);
        for (size_t i = 0; i < spec->n_forwards; i++)
                free(spec->forwards[i].host_addr);
        free(spec->forwards);
        *spec = (VmSpec) {};
}

static int strdup_or_null(char **dst, const char *src) {
        if (!src) {
                *dst = NULL;
                return 0;
        }
        *dst = strdup(src);
        return *dst ? 0 : -ENOMEM;
}

int vm_spec_copy(VmSpec *dst, const VmSpec *src) {
        _cleanup_(vm_spec_done) VmSpec copy = {
                .cpus = src->cpus,
                .memory_mib = src->memory_mib,
                .accel = src->accel,
                .arch = src->arch,
        };

        if (strdup_or_null(&copy.machine, src->machine) < 0 ||
            strdup_or_null(&copy.cpu_model, src->cpu_model) < 0 ||
            strdup_or_null(&copy.kernel, src->kernel) < 0 ||
            strdup_or_null(&copy.initrd, src->initrd) < 0 ||
            strdup_or_null(&copy.cmdline, src->cmdline) < 0 ||
            strdup_or_null(&copy.disk, src->disk) < 0)
                return -ENOMEM;

        if (src->n_forwards > 0) {
                copy.forwards = calloc(src->n_forwards, sizeof(PortForward));
                if (!copy.forwards)
                        return -ENOMEM;
                for (size_t i = 0; i < src->n_forwards; i++) {
                        copy.forwards[i] = src->forwards[i];
                        copy.forwards[i].host_addr = NULL;
                        /* Count it now so that vm_spec_done() frees what was copied so far. */
                        copy.n_forwards = i + 1;
                        if (strdup_or_null(&copy.forwards[i].host_addr, src->forwards[i].host_addr) < 0)
                                return -ENOMEM;
                }
        }

        *dst = copy;
        copy = (VmSpec) {};
        return 0;
}

/* Optional strings: NULL and "" both mean "not set" (proto3 cannot tell them apart). */
static bool optional_streq(const char *a, const char *b) {
        return streq(strempty(a), strempty(b));
}

static const char *forward_host_addr(const PortForward *f) {
        return isempty(f->host_addr) ? SPEC_DEFAULT_HOST_ADDR : f->host_addr;
}

bool vm_spec_equal(const VmSpec *a, const VmSpec *b) {
        if (a == b)
                return true;
        if (!a || !b)
                return false;

        if (a->cpus != b->cpus || a->memory_mib != b->memory_mib || a->accel != b->accel || a->arch != b->arch)
                return false;
        if (!optional_streq(a->machine, b->machine) || !optional_streq(a->cpu_model, b->cpu_model) ||
            !optional_streq(a->kernel, b->kernel) || !optional_streq(a->initrd, b->initrd) ||
            !optional_streq(a->cmdline, b->cmdline) || !optional_streq(a->disk, b->disk))
                return false;

        /* Order matters: it is the order of hostfwd= entries on the command line. */
        if (a->n_forwards != b->n_forwards)
                return false;
        for (size_t i = 0; i < a->n_forwards; i++) {
                const PortForward *x = &a->forwards[i], *y = &b->forwards[i];

                if (x->host_port != y->host_port || x->guest_port != y->guest_port || x->protocol != y->protocol ||
                    !streq(forward_host_addr(x), forward_host_addr(y)))
                        return false;
        }
        return true;
}

static void empty_to_null(char **s) {
        if (*s && !**s) {
                free(*s);
                *s = NULL;
        }
}

int vm_spec_apply_defaults(VmSpec *spec) {
        if (spec->cpus == 0)
                spec->cpus = SPEC_DEFAULT_CPUS;
        if (spec->memory_mib == 0)
                spec->memory_mib = SPEC_DEFAULT_MEMORY_MIB;

        empty_to_null(&spec->machine);
        empty_to_null(&spec->cpu_model);
        empty_to_null(&spec->kernel);
        empty_to_null(&spec->initrd);
        empty_to_null(&spec->cmdline);
        empty_to_null(&spec->disk);

        for (size_t i = 0; i < spec->n_forwards; i++) {
                PortForward *f = &spec->forwards[i];
                char *addr;

                if (!isempty(f->host_addr))
                        continue;
                addr = strdup(SPEC_DEFAULT_HOST_ADDR);
                if (!addr)
                        return -ENOMEM;
                free(f->host_addr);
                f->host_addr = addr;
        }
        return 0;
}

/* --- validation --- */

/* Renders a value for an error message: control characters escaped (a newline must not split a log line), bytes
 * above 0x7e escaped (the message may end up in a proto3 string, which must be valid UTF-8), quotes and
 * backslashes escaped, long values cut with "...". buf must hold 4 * QUOTE_MAX + 4 bytes. */
static const char *quote(char *buf, const char *s) {
        size_t n = 0, i;

        for (i = 0; s[i] && i < QUOTE_MAX; i++) {
                unsigned char c = (unsigned char) s[i];

                if (c == '\n')
                        n += (size_t) sprintf(buf + n, "\\n");
                else if (c == '\t')
                        n += (size_t) sprintf(buf + n, "\\t");
                else if (c == '\r')
                        n += (size_t) sprintf(buf + n, "\\r");
                else if (c == '\\' || c == '\'')
                        n += (size_t) sprintf(buf + n, "\\%c", c);
                else if (c < 0x20 || c >= 0x7f)
                        n += (size_t) sprintf(buf + n, "\\x%02x", c);
                else
                        buf[n++] = (char) c;
        }
        if (s[i])
                n += (size_t) sprintf(buf + n, "...");
        buf[n] = '\0';
        return buf;
}

#define QUOTE_BUF_SIZE (4 * QUOTE_MAX + 4)

static int check_no_control(const char *field, const char *value, HydraError *err) {
        char q[QUOTE_BUF_SIZE];

        for (const char *p = value; *p; p++) {
                unsigned char c = (unsigned char) *p;
                const char *what;
                char other[32];

                if (c >= 0x20 && c != 0x7f)
                        continue;
                if (c == '\n')
                        what = "a newline";
                else if (c == '\r')
                        what = "a carriage return";
                else if (c == '\t')
                        what = "a tab";
                else {
                        (void) snprintf(other, sizeof(other), "control character 0x%02x", c);
                        what = other;
                }
                return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (control characters are not allowed)",
                                       field, quote(q, value), what);
        }
        return 0;
}

static int check_length(const char *field, const char *value, size_t max, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = strlen(value);

        if (n > max)
                return hydra_error_set(err, -EINVAL, "%s: '%s' is %zu bytes long (allowed: at most %zu bytes)",
                                       field, quote(q, value), n, max);
        return 0;
}

static int check_path(const char *field, const char *path, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        r = check_no_control(field, path, err);
        if (r < 0)
                return r;
        r = check_length(field, path, SPEC_MAX_PATH, err);
        if (r < 0)
                return r;
        if (path[0] != '/')
                return hydra_error_set(err, -EINVAL,
                                       "%s: '%s' is not an absolute path (allowed: a path starting with '/')", field,
                                       quote(q, path));

        /* A ".." component: refused so that a spec names its files plainly. "a..b" is a fine name. */
        for (const char *p = path; *p;) {
                size_t len;

                p += strspn(p, "/");
                len = strcspn(p, "/");
                if (len == 2 && p[0] == '.' && p[1] == '.')
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' contains a '..' component (allowed: an absolute path "
                                               "without '..')",
                                               field, quote(q, path));
                p += len;
        }
        return 0;
}

/* "','" for a printable ASCII character, "byte 0xc3" otherwise (half a UTF-8 sequence must not reach a log). */
static const char *describe_char(char buf[static 16], char c) {
        unsigned char u = (unsigned char) c;

        if (u > 0x20 && u < 0x7f)
                (void) snprintf(buf, 16, "'%c'", c);
        else if (u == ' ')
                (void) snprintf(buf, 16, "a space");
        else
                (void) snprintf(buf, 16, "byte 0x%02x", u);
        return buf;
}

static bool is_name_char(char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
               c == '_' || c == '-';
}

/* Length of the longest prefix of s made of [A-Za-z0-9._-]. */
static size_t name_span(const char *s, size_t max) {
        size_t n = 0;

        while (n < max && is_name_char(s[n]))
                n++;
        return n;
}

static int check_machine(const char *machine, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        size_t n;
        int r;

        r = check_no_control("machine", machine, err);
        if (r < 0)
                return r;
        r = check_length("machine", machine, SPEC_MAX_MACHINE, err);
        if (r < 0)
                return r;

        n = name_span(machine, SIZE_MAX);
        if (machine[n] == ',')
                return hydra_error_set(err, -EINVAL,
                                       "machine: '%s' contains ',' which QEMU would read as an option separator; "
                                       "set accel with the accel field (allowed: a machine type name of letters, "
                                       "digits, '.', '_', '-')",
                                       quote(q, machine));
        if (machine[n])
                return hydra_error_set(err, -EINVAL,
                                       "machine: '%s' contains %s (allowed: a machine type name of letters, digits, "
                                       "'.', '_', '-')",
                                       quote(q, machine), describe_char(c, machine[n]));
        return 0;
}

/* One element after the model, len bytes at elem: "+NAME", "-NAME" or "NAME=VALUE". */
static bool cpu_feature_ok(const char *elem, size_t len) {
        size_t k;

        if (elem[0] == '+' || elem[0] == '-')
                return len > 1 && name_span(elem + 1, len - 1) == len - 1;

        k = name_span(elem, len);
        return k > 0 && k < len - 1 && elem[k] == '=' && name_span(elem + k + 1, len - k - 1) == len - k - 1;
}

#define CPU_MODEL_ALLOWED                                                                                        \
        "allowed: MODEL[,+FEATURE|,-FEATURE|,FEATURE=VALUE]... with names and values of letters, digits, '.', " \
        "'_', '-'"

static int check_cpu_model(const char *model, HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        const char *p;
        size_t n;
        int r;

        r = check_no_control("cpu_model", model, err);
        if (r < 0)
                return r;
        r = check_length("cpu_model", model, SPEC_MAX_CPU_MODEL, err);
        if (r < 0)
                return r;

        n = name_span(model, SIZE_MAX);
        if (n == 0)
                return hydra_error_set(err, -EINVAL, "cpu_model: '%s' does not start with a model name (%s)",
                                       quote(q, model), CPU_MODEL_ALLOWED);
        if (model[n] && model[n] != ',')
                return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has %s in the model name (%s)",
                                       quote(q, model), describe_char(c, model[n]), CPU_MODEL_ALLOWED);

        /* Each element after the model: +NAME, -NAME or NAME=VALUE. */
        p = model + n;
        for (unsigned idx = 1; *p; idx++) {
                const char *elem = p + 1; /* skip the ',' */
                size_t len = strcspn(elem, ",");
                char f[QUOTE_BUF_SIZE], fe[QUOTE_MAX + 1];

                if (len == 0)
                        return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has an empty feature (element %u) (%s)",
                                               quote(q, model), idx, CPU_MODEL_ALLOWED);
                if (!cpu_feature_ok(elem, len)) {
                        (void) snprintf(fe, sizeof(fe), "%.*s", (int) (len < QUOTE_MAX ? len : QUOTE_MAX), elem);
                        return hydra_error_set(err, -EINVAL, "cpu_model: '%s' has a malformed feature '%s' (%s)",
                                               quote(q, model), quote(f, fe), CPU_MODEL_ALLOWED);
                }
                p = elem + len;
        }
        return 0;
}

static int check_forwards(const VmSpec *spec, HydraError *err) {
        char field[64], q[QUOTE_BUF_SIZE];
        int r;

        for (size_t i = 0; i < spec->n_forwards; i++) {
                const PortForward *f = &spec->forwards[i];
                const char *addr = forward_host_addr(f);
                struct in_addr in;

                if ((int) f->protocol < 0 || f->protocol >= _FORWARD_PROTOCOL_MAX)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].protocol: %d is not a known protocol (allowed: tcp, udp)",
                                               i, (int) f->protocol);
                if (f->host_port < 1 || f->host_port > 65535)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].host_port: %" PRIu32
                                               " is out of range (allowed: 1-65535)",
                                               i, f->host_port);
                if (f->guest_port < 1 || f->guest_port > 65535)
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].guest_port: %" PRIu32
                                               " is out of range (allowed: 1-65535)",
                                               i, f->guest_port);

                (void) snprintf(field, sizeof(field), "forwards[%zu].host_addr", i);
                r = check_no_control(field, addr, err);
                if (r < 0)
                        return r;
                if (inet_pton(AF_INET, addr, &in) != 1)
                        return hydra_error_set(err, -EINVAL,
                                               "%s: '%s' is not an IPv4 address (allowed: a dotted-quad literal such "
                                               "as 127.0.0.1 or 0.0.0.0; empty means 127.0.0.1)",
                                               field, quote(q, addr));

                /* Two listeners on one host port collide if their addresses are equal or either is the wildcard
                 * (the kernel refuses the second bind). Guest ports may repeat. */
                for (size_t j = 0; j < i; j++) {
                        const PortForward *g = &spec->forwards[j];
                        const char *gaddr = forward_host_addr(g);

                        if (g->protocol != f->protocol || g->host_port != f->host_port)
                                continue;
                        if (!streq(addr, gaddr) && !streq(addr, "0.0.0.0") && !streq(gaddr, "0.0.0.0"))
                                continue;
                        return hydra_error_set(err, -EINVAL,
                                               "forwards[%zu].host_port: %" PRIu32
                                               " is used twice (also forwards[%zu]: %s %s:%" PRIu32
                                               "; allowed: each %s host port once per address)",
                                               i, f->host_port, j, forward_protocol_to_string(g->protocol), gaddr,
                                               g->host_port, forward_protocol_to_string(f->protocol));
                }
        }
        return 0;
}

int vm_spec_validate(const VmSpec *spec, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        int r;

        if (spec->cpus < 1 || spec->cpus > SPEC_MAX_CPUS)
                return hydra_error_set(err, -EINVAL, "cpus: %u is out of range (allowed: 1-%u)", spec->cpus,
                                       SPEC_MAX_CPUS);
        if (spec->memory_mib < SPEC_MIN_MEMORY_MIB)
                return hydra_error_set(err, -EINVAL,
                                       "memory_mib: %" PRIu64 " is below the minimum (allowed: at least %u MiB)",
                                       spec->memory_mib, SPEC_MIN_MEMORY_MIB);
        if (spec->memory_mib > SPEC_MAX_MEMORY_MIB)
                return hydra_error_set(err, -EINVAL,
                                       "memory_mib: %" PRIu64 " is above the maximum (allowed: at most %" PRIu64
                                       " MiB)",
                                       spec->memory_mib, SPEC_MAX_MEMORY_MIB);
        if ((int) spec->accel < 0 || spec->accel >= _ACCEL_MAX)
                return hydra_error_set(err, -EINVAL, "accel: %d is not a known accelerator (allowed: auto, kvm, tcg)",
                                       (int) spec->accel);
        if ((int) spec->arch < 0 || spec->arch >= _ARCH_MAX)
                return hydra_error_set(err, -EINVAL, "arch: %d is not a known architecture (allowed: x86_64, aarch64)",
                                       (int) spec->arch);

        if (!isempty(spec->machine)) {
                r = check_machine(spec->machine, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(spec->cpu_model)) {
                r = check_cpu_model(spec->cpu_model, err);
                if (r < 0)
                        return r;
        }

        if (!isempty(spec->kernel)) {
                r = check_path("kernel", spec->kernel, err);
                if (r < 0)
                        return r;
        }
        if (!isempty(spec->initrd)) {
                r = check_path("initrd", spec->initrd, err);
                if (r < 0)
                        return r;
                if (isempty(spec->kernel))
                        return hydra_error_set(err, -EINVAL,
                                               "initrd: '%s' given without kernel (allowed: an initrd only with a "
                                               "kernel)",
                                               quote(q, spec->initrd));
        }
        if (!isempty(spec->cmdline)) {
                /* -append is not a key=value option: commas are fine, control characters are not. */
                r = check_no_control("cmdline", spec->cmdline, err);
                if (r < 0)
                        return r;
                r = check_length("cmdline", spec->cmdline, SPEC_MAX_CMDLINE, err);
                if (r < 0)
                        return r;
                if (isempty(spec->kernel))
                        return hydra_error_set(err, -EINVAL,
                                               "cmdline: '%s' given without kernel (allowed: a command line only "
                                               "with a kernel)",
                                               quote(q, spec->cmdline));
        }
        if (!isempty(spec->disk)) {
                r = check_path("disk", spec->disk, err);
                if (r < 0)
                        return r;
        }

        return check_forwards(spec, err);
}
