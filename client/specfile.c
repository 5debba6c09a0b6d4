/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "specfile.h"

/* Longest line we accept; inih's buffer is made larger so that it never splits a line (see spec_load_file). */
#define SPEC_MAX_LINE 4096

typedef enum SpecKey {
        KEY_VM_CPUS,
        KEY_VM_MEMORY,
        KEY_VM_ACCEL,
        KEY_VM_ARCH,
        KEY_VM_MACHINE,
        KEY_VM_CPU,
        KEY_KERNEL_PATH,
        KEY_KERNEL_INITRD,
        KEY_KERNEL_CMDLINE,
        KEY_DISK_PATH,
        KEY_NETWORK_FORWARD,
        _KEY_MAX,
        _KEY_INVALID = -EINVAL,
} SpecKey;

static const char *const section_table[] = { "vm", "kernel", "disk", "network" };

static const struct {
        const char *section;
        const char *name;
        bool repeatable; /* each line adds one more; otherwise a second line in the same file is an error */
} key_table[_KEY_MAX] = {
        [KEY_VM_CPUS] = { "vm", "cpus" },
        [KEY_VM_MEMORY] = { "vm", "memory" },
        [KEY_VM_ACCEL] = { "vm", "accel" },
        [KEY_VM_ARCH] = { "vm", "arch" },
        [KEY_VM_MACHINE] = { "vm", "machine" },
        [KEY_VM_CPU] = { "vm", "cpu" },
        [KEY_KERNEL_PATH] = { "kernel", "path" },
        [KEY_KERNEL_INITRD] = { "kernel", "initrd" },
        [KEY_KERNEL_CMDLINE] = { "kernel", "cmdline" },
        [KEY_DISK_PATH] = { "disk", "path" },
        [KEY_NETWORK_FORWARD] = { "network", "forward", true },
};

static const char *const accel_table[] = {
        [HYDRA__V1__ACCEL__ACCEL_AUTO] = "auto",
        [HYDRA__V1__ACCEL__ACCEL_KVM] = "kvm",
        [HYDRA__V1__ACCEL__ACCEL_TCG] = "tcg",
};

Hydra__V1__VmSpec *spec_new(void) {
        Hydra__V1__VmSpec *spec = malloc(sizeof(*spec));

        if (spec)
                hydra__v1__vm_spec__init(spec);
        return spec;
}

Hydra__V1__VmSpec *spec_free(Hydra__V1__VmSpec *spec) {
        hydra__v1__vm_spec__free_unpacked(spec, NULL);
        return NULL;
}

/* String fields are either protobuf-c's shared empty string or ours to free. */
static void field_reset(char **field) {
        if (*field != protobuf_c_empty_string)
                free(*field);
        *field = (char *) protobuf_c_empty_string;
}

static int field_set(char **field, const char *value) {
        char *s;

        if (isempty(value)) {
                field_reset(field);
                return 0;
        }
        s = strdup(value);
        if (!s)
                return -ENOMEM;
        field_reset(field);
        *field = s;
        return 0;
}

/* Base-10 digits only: no sign, no blanks, no 0x (strtoull accepts all three). */
static int parse_u64(const char *s, uint64_t *ret) {
        uint64_t v = 0;

        if (isempty(s))
                return -EINVAL;
        for (const char *p = s; *p; p++) {
                if (*p < '0' || *p > '9')
                        return -EINVAL;
                if (v > (UINT64_MAX - (uint64_t) (*p - '0')) / 10)
                        return -ERANGE;
                v = v * 10 + (uint64_t) (*p - '0');
        }
        *ret = v;
        return 0;
}

/* "512" (MiB), "512M", "2G", "1T", "1048576K"; an optional "iB" or "B" after the letter; binary units. */
static int parse_memory_mib(const char *s, uint64_t *ret, HydraError *err) {
        static const char units[] = "KMGT";
        _cleanup_free_ char *digits = NULL;
        uint64_t n, mib;
        size_t len = strspn(s, "0123456789");
        const char *suffix = s + len, *u;
        int shift; /* log2 of the unit in KiB */

        digits = strndup(s, len);
        if (!digits)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (parse_u64(digits, &n) < 0)
                goto bad;

        if (*suffix == '\0')
                shift = 10; /* plain number: MiB */
        else {
                char c = (char) toupper((unsigned char) suffix[0]);

                u = c ? strchr(units, c) : NULL;
                if (!u)
                        goto bad;
                if (!streq(suffix + 1, "") && !streq(suffix + 1, "B") && !streq(suffix + 1, "iB"))
                        goto bad;
                shift = 10 * (int) (u - units);
        }

        if (shift == 0) {
                if (n % 1024 != 0)
                        return hydra_error_set(err, -EINVAL,
                                               "vm.memory: '%s' is not a whole number of MiB (sizes below 1M are "
                                               "refused)", s);
                mib = n / 1024;
        } else {
                int up = shift - 10;
                if (n > (UINT64_MAX >> up))
                        return hydra_error_set(err, -ERANGE, "vm.memory: '%s' is too large", s);
                mib = n << up;
        }
        *ret = mib;
        return 0;

bad:
        return hydra_error_set(err, -EINVAL,
                               "vm.memory: '%s' is not a size (expected MiB, or a number with a K, M, G or T suffix, "
                               "e.g. 512M or 2G)", s);
}

static int parse_port(const char *s, const char *what, uint32_t *ret, HydraError *err) {
        uint64_t v;

        if (parse_u64(s, &v) < 0)
                return hydra_error_set(err, -EINVAL, "network.forward: %s '%s' is not a number", what, s);
        if (v < 1 || v > 65535)
                return hydra_error_set(err, -EINVAL, "network.forward: %s %s is out of range (allowed: 1-65535)",
                                       what, s);
        *ret = (uint32_t) v;
        return 0;
}

/* [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp] */
static int parse_forward(const char *value, Hydra__V1__PortForward **ret, HydraError *err) {
        _cleanup_free_ char *s = strdup(value);
        Hydra__V1__PortForward *fw = NULL;
        char *proto, *guest, *host, *addr = NULL;
        int r;

        if (!s)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        proto = strchr(s, '/');
        if (proto) {
                *proto++ = '\0';
                if (!streq(proto, "tcp") && !streq(proto, "udp"))
                        return hydra_error_set(err, -EINVAL,
                                               "network.forward: protocol '%s' is not supported (allowed: tcp, udp)",
                                               proto);
        }
        guest = strrchr(s, ':');
        if (!guest)
                goto bad;
        *guest++ = '\0';
        host = strrchr(s, ':');
        if (host) {
                *host++ = '\0';
                addr = s;
                if (isempty(addr))
                        return hydra_error_set(err, -EINVAL,
                                               "network.forward: '%s': empty host address (leave it out for "
                                               "127.0.0.1)", value);
        } else
                host = s;

        fw = malloc(sizeof(*fw));
        if (!fw)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        hydra__v1__port_forward__init(fw);
        r = parse_port(host, "host port", &fw->host_port, err);
        if (r >= 0)
                r = parse_port(guest, "guest port", &fw->guest_port, err);
        if (r >= 0 && (field_set(&fw->host_addr, addr) < 0 || field_set(&fw->protocol, proto ?: "tcp") < 0))
                r = hydra_error_set(err, -ENOMEM, "out of memory");
        if (r < 0) {
                hydra__v1__port_forward__free_unpacked(fw, NULL);
                return r;
        }
        *ret = fw;
        return 0;

bad:
        return hydra_error_set(err, -EINVAL,
                               "network.forward: '%s' is not [HOST_ADDR:]HOST_PORT:GUEST_PORT[/tcp|/udp]", value);
}

/* Lexically cleans base + "/" + rel (base absolute): no "//", "." or "x/.." left; symlinks are not resolved, so
 * a link such as /boot/vmlinuz keeps following the kernel it points to. */
static char *path_join_clean(const char *base, const char *rel) {
        _cleanup_free_ char *joined = NULL;
        char *out, *o, *save = NULL;

        if (asprintf(&joined, "%s/%s", base, rel) < 0)
                return NULL;
        out = malloc(strlen(joined) + 2);
        if (!out)
                return NULL;
        o = out;
        for (char *c = strtok_r(joined, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
                if (streq(c, "."))
                        continue;
                if (streq(c, "..")) {
                        while (o > out && *--o != '/')
                                ;
                        continue;
                }
                *o++ = '/';
                o = stpcpy(o, c);
        }
        if (o == out)
                *o++ = '/';
        *o = '\0';
        return out;
}

static int field_set_path(char **field, const char *value, const char *base_dir) {
        _cleanup_free_ char *p = NULL;

        if (isempty(value) || value[0] == '/')
                return field_set(field, value);
        p = path_join_clean(base_dir, value);
        if (!p)
                return -ENOMEM;
        return field_set(field, p);
}

static Hydra__V1__KernelBoot *spec_kernel(Hydra__V1__VmSpec *spec) {
        if (!spec->kernel) {
                spec->kernel = malloc(sizeof(*spec->kernel));
                if (spec->kernel)
                        hydra__v1__kernel_boot__init(spec->kernel);
        }
        return spec->kernel;
}

static void spec_forwards_clear(Hydra__V1__VmSpec *spec) {
        for (size_t i = 0; i < spec->n_forwards; i++)
                hydra__v1__port_forward__free_unpacked(spec->forwards[i], NULL);
        free(spec->forwards);
        spec->forwards = NULL;
        spec->n_forwards = 0;
}

static SpecKey key_lookup(const char *section, const char *name, HydraError *err) {
        char known[256] = "";
        bool section_known = false;

        for (size_t i = 0; i < ELEMENTSOF(section_table); i++)
                section_known = section_known || streq(section, section_table[i]);
        if (!section_known) {
                if (isempty(section))
                        return hydra_error_set(err, -EINVAL, "key '%s' outside any section (sections: [vm], "
                                               "[kernel], [disk], [network])", name);
                return hydra_error_set(err, -EINVAL, "unknown section [%s] (known: vm, kernel, disk, network)",
                                       section);
        }

        for (size_t k = 0; k < _KEY_MAX; k++) {
                if (!streq(key_table[k].section, section))
                        continue;
                if (streq(key_table[k].name, name))
                        return (SpecKey) k;
                if (known[0])
                        strcat(known, ", ");
                strcat(known, key_table[k].name);
        }
        return hydra_error_set(err, -EINVAL, "unknown key '%s' in [%s] (known: %s)", name, section, known);
}

static int spec_set(Hydra__V1__VmSpec *spec, SpecKey key, const char *value, const char *base_dir,
                    HydraError *err) {
        Hydra__V1__PortForward *fw = NULL, **a;
        Hydra__V1__KernelBoot *kernel;
        uint64_t v;
        int r = 0;

        switch (key) {
        case KEY_VM_CPUS:
                if (isempty(value)) {
                        spec->cpus = 0;
                        return 0;
                }
                r = parse_u64(value, &v);
                if (r < 0 || v > UINT32_MAX)
                        return hydra_error_set(err, -EINVAL, "vm.cpus: '%s' is not a number", value);
                spec->cpus = (uint32_t) v;
                return 0;

        case KEY_VM_MEMORY:
                if (isempty(value)) {
                        spec->memory_mib = 0;
                        return 0;
                }
                return parse_memory_mib(value, &spec->memory_mib, err);

        case KEY_VM_ACCEL:
                if (isempty(value)) {
                        spec->accel = HYDRA__V1__ACCEL__ACCEL_AUTO;
                        return 0;
                }
                for (size_t i = 0; i < ELEMENTSOF(accel_table); i++)
                        if (streq(accel_table[i], value)) {
                                spec->accel = (Hydra__V1__Accel) i;
                                return 0;
                        }
                return hydra_error_set(err, -EINVAL, "vm.accel: '%s' is not an accelerator (allowed: auto, kvm, tcg)",
                                       value);

        case KEY_VM_ARCH:
                r = field_set(&spec->arch, value);
                break;
        case KEY_VM_MACHINE:
                r = field_set(&spec->machine, value);
                break;
        case KEY_VM_CPU:
                r = field_set(&spec->cpu_model, value);
                break;
        case KEY_DISK_PATH:
                r = field_set_path(&spec->disk, value, base_dir);
                break;

        case KEY_KERNEL_PATH:
        case KEY_KERNEL_INITRD:
        case KEY_KERNEL_CMDLINE:
                kernel = spec_kernel(spec);
                if (!kernel)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                if (key == KEY_KERNEL_PATH)
                        r = field_set_path(&kernel->kernel, value, base_dir);
                else if (key == KEY_KERNEL_INITRD)
                        r = field_set_path(&kernel->initrd, value, base_dir);
                else
                        r = field_set(&kernel->cmdline, value);
                break;

        case KEY_NETWORK_FORWARD:
                if (isempty(value)) {
                        spec_forwards_clear(spec);
                        return 0;
                }
                r = parse_forward(value, &fw, err);
                if (r < 0)
                        return r;
                a = realloc(spec->forwards, (spec->n_forwards + 1) * sizeof(*a));
                if (!a) {
                        hydra__v1__port_forward__free_unpacked(fw, NULL);
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                }
                a[spec->n_forwards++] = fw;
                spec->forwards = a;
                return 0;

        default:
                abort();
        }
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        return 0;
}

typedef struct ParseContext {
        Hydra__V1__VmSpec *spec; /* borrowed */
        const char *name;        /* the file as messages name it */
        const char *base_dir;    /* borrowed */
        FILE *f;                 /* borrowed */
        unsigned line;           /* the physical line inih is on */
        size_t line_len;
        bool at_line_start;
        bool failed;             /* err is set; ignore the rest */
        unsigned seen[_KEY_MAX]; /* line that set a non-repeatable key, 0 if none did */
        HydraError *err;
} ParseContext;

/* fgets() for inih, counting lines: inih does not pass line numbers to the handler in Debian's build. */
static char *ini_read_line(char *buf, int size, void *userdata) {
        ParseContext *ctx = userdata;
        size_t n;

        if (ctx->failed || !fgets(buf, size, ctx->f))
                return NULL;
        if (ctx->at_line_start) {
                ctx->line++;
                ctx->line_len = 0;
        }
        n = strlen(buf);
        ctx->line_len += n;
        ctx->at_line_start = n > 0 && buf[n - 1] == '\n';
        if (ctx->line_len > SPEC_MAX_LINE) {
                hydra_error_set(ctx->err, -EINVAL, "%s:%u: line is longer than %d bytes", ctx->name, ctx->line,
                                SPEC_MAX_LINE);
                ctx->failed = true;
                return NULL;
        }
        return buf;
}

static int on_ini_entry(void *userdata, const char *section, const char *name, const char *value) {
        ParseContext *ctx = userdata;
        SpecKey key;
        int r;

        if (ctx->failed)
                return 0;

        key = key_lookup(section, name, ctx->err);
        if (key < 0)
                goto fail;
        if (!key_table[key].repeatable && ctx->seen[key] != 0) {
                hydra_error_set(ctx->err, -EINVAL, "%s.%s: already set on line %u", section, name, ctx->seen[key]);
                goto fail;
        }
        r = spec_set(ctx->spec, key, value, ctx->base_dir, ctx->err);
        if (r < 0)
                goto fail;
        ctx->seen[key] = ctx->line;
        return 1;

fail:
        hydra_error_prefix(ctx->err, "%s:%u: ", ctx->name, ctx->line);
        ctx->failed = true;
        return 0;
}

static char *dir_of(const char *path) {
        _cleanup_free_ char *cwd = NULL, *dir = NULL;
        const char *slash = strrchr(path, '/');

        if (slash == path)
                return strdup("/");
        dir = slash ? strndup(path, (size_t) (slash - path)) : strdup(".");
        if (!dir)
                return NULL;
        if (dir[0] == '/')
                return TAKE_PTR(dir);
        cwd = get_current_dir_name();
        if (!cwd)
                return NULL;
        return path_join_clean(cwd, dir);
}

int spec_load_file(Hydra__V1__VmSpec *spec, const char *path, HydraError *err) {
        _cleanup_free_ char *base_dir = NULL;
        bool is_stdin = streq(path, "-");
        ParseContext ctx = {
                .spec = spec,
                .name = is_stdin ? "<stdin>" : path,
                .at_line_start = true,
                .err = err,
        };
        FILE *f;
        int r;

        /* Debian's libinih (55-1) makes its compile-time switches run-time variables. Heap buffer growing to
         * twice our line limit, so that a long kernel command line is never split into two "lines" (the default
         * is a 200-byte stack buffer); values taken literally (no inline ';' comments); no indented
         * continuation lines; stop at the first error so that the returned line number is the one we report. */
        ini_use_stack = false;
        ini_allow_realloc = true;
        ini_max_line = 2 * SPEC_MAX_LINE;
        ini_allow_inline_comments = false;
        ini_allow_multiline = false;
        ini_stop_on_first_error = true;

        base_dir = dir_of(is_stdin ? "./-" : path);
        if (!base_dir)
                return hydra_error_set(err, -errno ?: -ENOMEM, "%s: cannot find its directory: %m", ctx.name);

        f = is_stdin ? stdin : fopen(path, "re");
        if (!f)
                return hydra_error_set(err, -errno, "%s: %m", path);
        ctx.f = f;
        ctx.base_dir = base_dir;

        r = ini_parse_stream(ini_read_line, &ctx, on_ini_entry, &ctx);
        if (ctx.failed)
                r = err ? err->code : -EINVAL;
        else if (ferror(f))
                r = hydra_error_set(err, -EIO, "%s: cannot read: %m", ctx.name);
        else if (r == -2)
                r = hydra_error_set(err, -ENOMEM, "%s: out of memory", ctx.name);
        else if (r > 0)
                r = hydra_error_set(err, -EINVAL, "%s:%d: syntax error: expected '[section]', 'key = value', or a "
                                    "comment starting with '#' or ';'", ctx.name, r);
        else if (r < 0)
                r = hydra_error_set(err, -EIO, "%s: cannot read", ctx.name);
        if (!is_stdin)
                fclose(f);
        return r < 0 ? r : 0;
}

int spec_apply_set(Hydra__V1__VmSpec *spec, const char *assignment, HydraError *err) {
        _cleanup_free_ char *cwd = NULL, *lhs = NULL;
        const char *eq = strchr(assignment, '='), *value;
        char *dot, *section, *name;
        SpecKey key;

        if (!eq)
                return hydra_error_set(err, -EINVAL, "expected SECTION.KEY=VALUE, e.g. vm.cpus=2");
        lhs = strndup(assignment, (size_t) (eq - assignment));
        if (!lhs)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        value = eq + 1;
        dot = strchr(lhs, '.');
        if (!dot)
                return hydra_error_set(err, -EINVAL, "expected SECTION.KEY=VALUE, e.g. vm.cpus=2");
        *dot = '\0';
        section = lhs;
        name = dot + 1;

        key = key_lookup(section, name, err);
        if (key < 0)
                return key;
        cwd = get_current_dir_name();
        if (!cwd)
                return hydra_error_set(err, -errno, "cannot get the current directory: %m");
        return spec_set(spec, key, value, cwd, err);
}

void spec_finish(Hydra__V1__VmSpec *spec) {
        Hydra__V1__KernelBoot *k = spec->kernel;

        if (k && isempty(k->kernel) && isempty(k->initrd) && isempty(k->cmdline)) {
                hydra__v1__kernel_boot__free_unpacked(k, NULL);
                spec->kernel = NULL;
        }
}
