/* SPDX-License-Identifier: MIT */
/* start-vm.sh's environment, read the way the script reads it. Every `: ${VAR:=default}` of the script has a home
 * here: a spec field, a note saying where the setting lives now, or a refusal. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <pwd.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "field.h"
#include "fromenv.h"
#include "macro.h"
#include "password.h"
#include "specfile.h"

extern char **environ;

/* --- presets: the wrappers' `: ${VAR:=value}` lines that reach the spec --- */

typedef struct PresetVar {
        const char *name;
        const char *value;
} PresetVar;

/* The wrappers also set DEFAULT_DIR_IMAGE, PIDFILE, KVM_DAEMONIZE and DEFAULT_KVM_DARWIN_CPU: daemon-level or
 * macOS-only, nothing for a spec. */
static const PresetVar preset_host[] = { /* run-host.sh */
        { "DISABLE_CONTAINERD_CSI_PROXY", "1" },
        { "DISABLE_9P_KUBELET_MOUNTS", "1" },
        { "COPY_IMAGE_BACKUP", "1" },
        { "ENABLE_K3S_DIOD", "1" },
        { "DEFAULT_KVM_DISK_SIZE", "25" },
        { "DEFAULT_KVM_PORTS_REDIRECT",
          "6443:6443;30123:30123;31883:31883;30443:443;30080:80;30700:30700;30900:30900" },
        {},
};

static const PresetVar preset_isolated[] = { /* run-isolated.sh */
        { "VM_HOSTNAME", "hydra-isolated" },
        { "EXTERNAL_9P_KUBELET_MOUNTS", "1" },
        { "COPY_IMAGE_BACKUP", "0" },
        { "DEFAULT_KVM_DISK_SIZE", "16" },
        { "DEFAULT_KVM_HOST_SSHD_PORT", "5556" },
        { "DEFAULT_KVM_PORTS_REDIRECT", "30800:8000;30801:8001;30802:8002" },
        {},
};

static const PresetVar preset_isolated_bare[] = { /* run-isolated-bare.sh */
        { "RUN_BARE_KERNEL", "1" },
        { "VM_HOSTNAME", "hydra-isolated" },
        { "EXTERNAL_9P_KUBELET_MOUNTS", "1" },
        { "COPY_IMAGE_BACKUP", "0" },
        { "DEFAULT_KVM_DISK_SIZE", "16" },
        { "DEFAULT_KVM_HOST_SSHD_PORT", "5556" },
        { "DEFAULT_KVM_PORTS_REDIRECT", "30800:8000;30801:8001;30802:8002" },
        {},
};

static const PresetVar preset_isolated_crypt[] = { /* run-isolated-crypt.sh */
        { "VM_HOSTNAME", "hydra-isolated" },
        { "DISABLE_9P_KUBELET_MOUNTS", "1" },
        { "COPY_IMAGE_BACKUP", "0" },
        { "DEFAULT_KVM_DISK_SIZE", "16" },
        { "DEFAULT_KVM_HOST_SSHD_PORT", "5556" },
        { "DEFAULT_KVM_PORTS_REDIRECT", "30800:8000;30801:8001;30802:8002" },
        { "ENABLE_CONTAINERD_RIMD_PROXY", "1" },
        {},
};

static const struct {
        const char *name;
        const PresetVar *vars;
} preset_table[] = {
        { "host", preset_host },
        { "isolated", preset_isolated },
        { "isolated-bare", preset_isolated_bare },
        { "isolated-crypt", preset_isolated_crypt },
};

static const PresetVar *preset_find(const char *name) {
        for (size_t i = 0; name && i < ELEMENTSOF(preset_table); i++)
                if (streq(preset_table[i].name, name))
                        return preset_table[i].vars;
        return NULL;
}

bool fromenv_preset_known(const char *name) {
        return preset_find(name) != NULL;
}

const char *fromenv_preset_names(void) {
        return "host, isolated, isolated-bare, isolated-crypt";
}

/* --- reading variables --- */

typedef struct EnvContext {
        const PresetVar *preset; /* borrowed; NULL: none */
        FILE *notes;             /* borrowed */
        HydraError *err;
        const char *arch_m;      /* uname -m as the script names it: x86_64, aarch64 */
        const char *arch;        /* Debian's name: amd64, arm64 */
        bool root;
} EnvContext;

static void say(EnvContext *ctx, const char *kind, const char *fmt, va_list ap) {
        if (!ctx->notes)
                return;
        fprintf(ctx->notes, "hydractl: %s: ", kind);
        vfprintf(ctx->notes, fmt, ap);
        fputc('\n', ctx->notes);
}

/* Where a setting lives now, what the script did too: information. */
_printf_(2, 3) static void note(EnvContext *ctx, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        say(ctx, "note", fmt, ap);
        va_end(ap);
}

/* Set in the environment, non-empty. */
static const char *env_set(const char *name) {
        const char *v = getenv(name);

        return isempty(v) ? NULL : v;
}

/* `: ${NAME:=default}` after the preset's `: ${NAME:=value}`: an unset or empty variable takes the preset's value,
 * else def (which may be NULL: none). */
static const char *env_get(const EnvContext *ctx, const char *name, const char *def) {
        const char *v = env_set(name);

        if (v)
                return v;
        for (const PresetVar *p = ctx->preset; p && p->name; p++)
                if (streq(p->name, name))
                        return p->value;
        return def;
}

/* A variable the script uses in shell arithmetic or [ -gt ]: an integer, or the script fails. */
static int env_int(EnvContext *ctx, const char *name, const char *def, long *ret) {
        const char *v = env_get(ctx, name, def), *digits;
        char *end;
        long n;

        digits = v && v[0] == '-' ? v + 1 : v;
        if (isempty(digits) || strspn(digits, "0123456789") != strlen(digits))
                return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is not a whole number (start-vm.sh uses it as "
                                       "one)", name, strempty(v));
        errno = 0;
        n = strtol(v, &end, 10);
        if (errno != 0)
                return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is out of range", name, v);
        *ret = n;
        return 0;
}

/* A count that goes into a uint32 field (GiB, CPUs): a whole number, 0 to 2^32-1. */
static int env_u32(EnvContext *ctx, const char *name, const char *def, uint32_t *ret) {
        long n;
        int r;

        r = env_int(ctx, name, def, &n);
        if (r < 0)
                return r;
        if (n < 0 || (unsigned long) n > UINT32_MAX)
                return hydra_error_set(ctx->err, -EINVAL, "%s: %ld is out of range (allowed: 0-%u)", name, n,
                                       UINT32_MAX);
        *ret = (uint32_t) n;
        return 0;
}

static int oom(EnvContext *ctx) {
        return hydra_error_set(ctx->err, -ENOMEM, "out of memory");
}

static bool ipv4_valid(const char *s) {
        struct in_addr ia;

        return inet_pton(AF_INET, s, &ia) == 1;
}

static bool url_ok(const char *s) {
        return (strncmp(s, "http://", 7) == 0 && s[7] && s[7] != '/') ||
               (strncmp(s, "https://", 8) == 0 && s[8] && s[8] != '/') || strncmp(s, "file:///", 8) == 0;
}

static int check_url(EnvContext *ctx, const char *name, const char *url) {
        if (!url_ok(url) || strpbrk(url, " \t\n"))
                return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is not a URL hydrad can fetch (allowed: "
                                       "http://..., https://..., file:///ABSOLUTE/PATH)", name, url);
        return 0;
}

/* A path the script uses relative to its current directory. */
static char *absolute_from_cwd(const char *path) {
        _cleanup_free_ char *cwd = NULL;
        char *p;

        if (path[0] == '/')
                return strdup(path);
        cwd = get_current_dir_name();
        if (!cwd || asprintf(&p, "%s/%s", cwd, path) < 0)
                return NULL;
        return p;
}

/* --- the host --- */

static int host_arch(EnvContext *ctx) {
        struct utsname u;

        if (uname(&u) < 0)
                return hydra_error_set(ctx->err, -errno, "uname: %m");
        if (streq(u.machine, "x86_64")) {
                ctx->arch_m = "x86_64";
                ctx->arch = "amd64";
        } else if (streq(u.machine, "aarch64") || streq(u.machine, "arm64")) {
                ctx->arch_m = "aarch64";
                ctx->arch = "arm64";
        } else
                return hydra_error_set(ctx->err, -EOPNOTSUPP, "this host is '%s': hydrad runs x86_64 and aarch64 "
                                       "VMs only", u.machine);
        return 0;
}

/* The major version `qemu-system-ARCH --version` prints, as the script's check_kvm_version reads it, or -errno. */
static int qemu_major_version(const char *arch_m) {
        char prog[64], out[512];
        char *argv[] = { prog, (char *) "--version", NULL };
        posix_spawn_file_actions_t fa;
        int pipefd[2], status, r;
        size_t len = 0;
        ssize_t n;
        const char *v;
        pid_t pid;

        snprintf(prog, sizeof(prog), "qemu-system-%s", arch_m);
        if (pipe2(pipefd, O_CLOEXEC) < 0)
                return -errno;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
        posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
        r = posix_spawnp(&pid, prog, &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(pipefd[1]);
        if (r != 0) {
                close(pipefd[0]);
                return -r;
        }
        while (len < sizeof(out) - 1 && (n = read(pipefd[0], out + len, sizeof(out) - 1 - len)) != 0) {
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        break;
                }
                len += (size_t) n;
        }
        out[len] = '\0';
        close(pipefd[0]);
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
                ;
        v = strstr(out, "QEMU emulator version ");
        if (!v)
                return -EBADMSG;
        v += strlen("QEMU emulator version ");
        if (!isdigit((unsigned char) *v))
                return -EBADMSG;
        return atoi(v);
}

/* --- the parts of the spec --- */

/* macOS-only variables: krunkit and gvproxy do not exist on Linux, and a setup that asks for them does not
 * migrate. */
static int refuse_macos(EnvContext *ctx) {
        static const char *const macos[] = {
                "KRUNKIT_HTTP_PORT",      "GVPROXY_HTTP_PORT", "DEFAULT_GVPROXY",
                "DEFAULT_DIR_TMP_SOCKET", "KRUNKIT_REBOOTS",
        };
        long krunkit;
        int r;

        r = env_int(ctx, "ENABLE_KRUNKIT", "0", &krunkit);
        if (r < 0)
                return r;
        if (krunkit != 0)
                return hydra_error_set(ctx->err, -EINVAL, "ENABLE_KRUNKIT=%ld: krunkit/gvproxy are macOS only; on "
                                       "Linux hydrad runs QEMU (unset ENABLE_KRUNKIT)", krunkit);
        for (size_t i = 0; i < ELEMENTSOF(macos); i++)
                if (env_set(macos[i]))
                        return hydra_error_set(ctx->err, -EINVAL, "%s is set: krunkit/gvproxy are macOS only; on "
                                               "Linux hydrad runs QEMU (unset %s)", macos[i], macos[i]);
        return 0;
}

/* Variables with no place in a spec: say where their setting lives now. */
static void note_elsewhere(EnvContext *ctx) {
        static const struct {
                const char *name;
                const char *what; /* the rest of "NAME ..." */
        } table[] = {
                { "DEFAULT_DIR_IMAGE", "is not used: hydrad keeps images, disks and seeds under its state_dir "
                                       "(hydrad.conf; default /var/lib/hydra)" },
                { "DEBUG", "is not used: run hydrad with --log-level debug (or log_level in hydrad.conf)" },
                { "PIDFILE", "is not needed: hydrad supervises QEMU ('hydractl status ROLE' shows its pid)" },
                { "KVM_DAEMONIZE", "is not needed: hydrad supervises QEMU" },
                { "DRY_RUN_ONLY", "is not used: 'hydractl plan ROLE' shows the QEMU command line and the files, "
                                  "starting nothing" },
                { "DEFAULT_KVM_LINUX_BIOS", "is not used (start-vm.sh never uses it either): KVM_BIOS sets the "
                                            "firmware" },
                { "DEFAULT_KVM_DARWIN_CPU", "is for macOS: not used on Linux" },
                { "DEFAULT_KVM_DARWIN_MEMORY", "is for macOS: not used on Linux" },
                { "DEFAULT_KVM_DARWIN_BIOS", "is for macOS: not used on Linux" },
                { "DEFAULT_KVM_DARWIN_BIOS_VAR", "is for macOS: not used on Linux" },
                { "DEFAULT_DIR_K3S_VAR_DARWIN", "is for macOS: not used on Linux" },
                { "DEFAULT_KVM_UNKNOWN_CPU", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_KVM_UNKNOWN_MEMORY", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_KVM_UNKNOWN_BIOS", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_KVM_UNKNOWN_BIOS_VAR", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_KVM_UNKNWON_BIOS", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_KVM_UNKNWON_BIOS_VAR", "is for systems other than Linux and macOS: not used" },
                { "DEFAULT_DIR_K3S_VAR_OTHER", "is for systems other than Linux and macOS: not used" },
        };

        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (env_set(table[i].name))
                        note(ctx, "%s %s", table[i].name, table[i].what);
}

/* hydrad's own variables (start-vm.sh has none of these): the restart policy, autostart and the readiness limit.
 * Unset: the spec's defaults (no restarts, no autostart, no limit). A guest with the containerd proxy is ready
 * when containerd answers through its forward (the guest's reason to exist), not at the login prompt, which
 * comes before cloud-init has installed and started anything. */
static int map_supervision(EnvContext *ctx, Hydra__V1__VmSpec *spec, bool proxy_disabled) {
        const char *restart = env_get(ctx, "HYDRA_RESTART", NULL), *autostart = env_get(ctx, "HYDRA_AUTOSTART", NULL),
                   *ready_timeout = env_get(ctx, "HYDRA_READY_TIMEOUT", NULL);
        Hydra__V1__Supervision *sv;
        int policy = 0, on = 0;
        unsigned long seconds = 0;

        if (!restart && !autostart && !ready_timeout && proxy_disabled)
                return 0;
        if (restart) {
                policy = restart_policy_from_name(restart);
                if (policy < 0)
                        return hydra_error_set(ctx->err, -EINVAL, "HYDRA_RESTART: '%s' is not a restart policy "
                                               "(allowed: no, on-failure, always)", restart);
        }
        if (autostart) {
                on = spec_parse_bool(autostart);
                if (on < 0)
                        return hydra_error_set(ctx->err, -EINVAL, "HYDRA_AUTOSTART: '%s' is not a boolean (allowed: "
                                               "true, false, yes, no, on, off, 1, 0)", autostart);
        }
        if (ready_timeout) {
                char *end = NULL;

                errno = 0;
                if (!isempty(ready_timeout) && strspn(ready_timeout, "0123456789") == strlen(ready_timeout))
                        seconds = strtoul(ready_timeout, &end, 10);
                if (!end || *end || errno != 0 || seconds > 86400)
                        return hydra_error_set(ctx->err, -EINVAL, "HYDRA_READY_TIMEOUT: '%s' is not a number of "
                                               "seconds (allowed: 0-86400; 0 is no limit)", ready_timeout);
        }
        sv = spec_supervision(spec);
        if (!sv)
                return oom(ctx);
        if (ready_timeout)
                sv->ready_timeout_seconds = (uint32_t) seconds;
        if (restart)
                sv->restart = (Hydra__V1__RestartPolicy) policy;
        if (autostart)
                sv->autostart = on;
        if (!proxy_disabled)
                sv->probe = HYDRA__V1__PROBE_KIND__PROBE_CONTAINERD; /* probe_port 0: 35000, the proxy's port */
        return 0;
}

/* The kubelet shares over 9p/TCP come from the host VM's diod (EXTERNAL_9P_KUBELET_MOUNTS, run-isolated.sh): such a VM
 * starts after the host VM (supervision.start_after = host). HYDRA_START_AFTER (host, isolated, none) says otherwise;
 * hydrad's own variable, start-vm.sh has none. */
static int map_start_after(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        const char *v = env_get(ctx, "HYDRA_START_AFTER", NULL), *after = NULL;
        Hydra__V1__Supervision *sv;

        if (v) {
                if (!streq(v, "host") && !streq(v, "isolated") && !streq(v, "none"))
                        return hydra_error_set(ctx->err, -EINVAL, "HYDRA_START_AFTER: '%s' is not a role (allowed: "
                                               "host, isolated, none)", v);
                after = streq(v, "none") ? NULL : v;
        } else if (spec->shares && spec->shares->kubelet == HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_TCP)
                after = "host";
        if (!after)
                return 0;
        sv = spec_supervision(spec);
        if (!sv || spec_field_set(&sv->start_after, after) < 0)
                return oom(ctx);
        return 0;
}

/* A hydrad variable that is a boolean in the spec file's words; unset or empty: def. */
static int env_bool(EnvContext *ctx, const char *name, bool def, bool *ret) {
        const char *v = env_get(ctx, name, NULL);
        int b;

        if (!v) {
                *ret = def;
                return 0;
        }
        b = spec_parse_bool(v);
        if (b < 0)
                return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is not a boolean (allowed: true, false, yes, no, "
                                       "on, off, 1, 0)", name, v);
        *ret = b;
        return 0;
}

static int map_size(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        const char *cpu_name = env_get(ctx, "KVM_CPU", NULL) ? "KVM_CPU" : "DEFAULT_KVM_LINUX_CPU";
        const char *mem_name = env_get(ctx, "KVM_MEMORY", NULL) ? "KVM_MEMORY" : "DEFAULT_KVM_LINUX_MEMORY";
        const char *accel = env_get(ctx, "HYDRA_ACCEL", "auto"), *v;
        uint32_t gib = 0;
        int r, a;

        r = env_u32(ctx, cpu_name, "2", &spec->cpus);
        if (r < 0)
                return r;
        r = env_u32(ctx, mem_name, "8", &gib); /* GiB: the script passes -m ${KVM_MEMORY}g */
        if (r < 0)
                return r;
        spec->memory_mib = (uint64_t) gib * 1024;
        r = env_u32(ctx, "DEFAULT_KVM_DISK_SIZE", "3", &spec->disk_size_gib);
        if (r < 0)
                return r;

        a = accel_from_name(accel);
        if (a < 0)
                return hydra_error_set(ctx->err, -EINVAL, "HYDRA_ACCEL: '%s' is not an accelerator (allowed: auto, "
                                       "kvm, tcg)", accel);
        spec->accel = (Hydra__V1__Accel) a;
        if (spec_field_set(&spec->arch, ctx->arch_m) < 0)
                return oom(ctx);

        /* Unset: the script's defaults (pc or virt; host under KVM, else a TCG model) are hydrad's too. */
        v = env_set("KVM_MACHINE_TYPE");
        if (v && strpbrk(v, " \t\n"))
                return hydra_error_set(ctx->err, -EINVAL, "KVM_MACHINE_TYPE: '%s' is not one word", v);
        if (v && spec_field_set(&spec->machine, v) < 0)
                return oom(ctx);
        v = env_set("KVM_CPU_TYPE");
        if (v && strpbrk(v, " \t\n"))
                return hydra_error_set(ctx->err, -EINVAL, "KVM_CPU_TYPE: '%s' is not one word", v);
        if (v && spec_field_set(&spec->cpu_model, v) < 0)
                return oom(ctx);
        return 0;
}

/* KVM_BIOS / KVM_BIOS_VAR, else the v9 or v7 defaults by QEMU's version; checked like check_if_bios_needed. */
static int map_firmware(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        const char *code = env_get(ctx, "KVM_BIOS", NULL), *vars = env_get(ctx, "KVM_BIOS_VAR", NULL);
        const char *code_name = "KVM_BIOS", *vars_name = "KVM_BIOS_VAR";
        _cleanup_free_ char *code_abs = NULL, *vars_abs = NULL;
        Hydra__V1__Firmware *fw;
        bool arm = streq(ctx->arch, "arm64");

        if (!code || !vars) {
                int major = qemu_major_version(ctx->arch_m);

                if (major < 0) {
                        note(ctx, "cannot read the version of qemu-system-%s (%s): using the firmware defaults for "
                             "QEMU < 9 (DEFAULT_KVM_LINUX_v7_BIOS)", ctx->arch_m,
                             major == -EBADMSG ? "unexpected output" : strerror(-major));
                        major = 0;
                }
                if (major >= 9) {
                        if (!code) {
                                code_name = "DEFAULT_KVM_LINUX_v9_BIOS";
                                code = env_get(ctx, code_name, NULL);
                        }
                        if (!vars) {
                                vars_name = "DEFAULT_KVM_LINUX_v9_BIOS_VAR";
                                vars = env_get(ctx, vars_name, NULL);
                        }
                } else {
                        if (!code) {
                                code_name = "DEFAULT_KVM_LINUX_v7_BIOS";
                                code = env_get(ctx, code_name, arm ? "/usr/share/AAVMF/AAVMF_CODE.fd"
                                                                   : "/usr/share/ovmf/OVMF.fd");
                        }
                        if (!vars) {
                                vars_name = "DEFAULT_KVM_LINUX_v7_BIOS_VAR";
                                vars = env_get(ctx, vars_name, arm ? "/usr/share/AAVMF/AAVMF_VARS.fd" : NULL);
                        }
                }
        }
        if (isempty(code))
                return 0; /* no firmware: QEMU's own (SeaBIOS on x86_64), as the script */

        code_abs = absolute_from_cwd(code);
        if (!code_abs)
                return oom(ctx);
        if (access(code_abs, F_OK) < 0)
                return hydra_error_set(ctx->err, -ENOENT, "%s: firmware '%s' not found (start-vm.sh refuses it "
                                       "too; install it, or set KVM_BIOS to the firmware to use)", code_name, code);
        fw = spec_firmware(spec);
        if (!fw || spec_field_set(&fw->code, code_abs) < 0)
                return oom(ctx);
        if (isempty(vars))
                return 0;
        vars_abs = absolute_from_cwd(vars);
        if (!vars_abs)
                return oom(ctx);
        if (access(vars_abs, F_OK) < 0)
                return hydra_error_set(ctx->err, -ENOENT, "%s: firmware variables '%s' not found (start-vm.sh "
                                       "refuses it too; install them, or set KVM_BIOS_VAR)", vars_name, vars);
        if (spec_field_set(&fw->vars, vars_abs) < 0)
                return oom(ctx);
        return 0;
}

static bool host_is(const char *url, const char *host) {
        const char *h = strstr(url, "://"), *end;

        if (!h)
                return false;
        h += 3;
        end = h + strcspn(h, "/:?#");
        return (size_t) (end - h) == strlen(host) && strncasecmp(h, host, strlen(host)) == 0;
}

static int map_image(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        _cleanup_free_ char *default_image = NULL, *source = NULL, *url = NULL, *sums = NULL;
        const char *image, *checksum, *sums_url;
        Hydra__V1__Source *src;
        size_t n;
        int r;

        if (asprintf(&default_image, "debian-13-generic-%s-20250814-2204.qcow2", ctx->arch) < 0)
                return oom(ctx);
        image = env_get(ctx, "DEFAULT_IMAGE", default_image);
        source = strdup(env_get(ctx, "DEFAULT_IMAGE_SOURCE_URL",
                                "https://cloud.debian.org/images/cloud/trixie/20250814-2204"));
        if (!source)
                return oom(ctx);
        n = strlen(source);
        while (n > 0 && source[n - 1] == '/')
                source[--n] = '\0';
        if (strchr(image, '/'))
                return hydra_error_set(ctx->err, -EINVAL, "DEFAULT_IMAGE: '%s' is not a file name (the directory "
                                       "goes in DEFAULT_IMAGE_SOURCE_URL)", image);
        if (asprintf(&url, "%s/%s", source, image) < 0)
                return oom(ctx);
        r = check_url(ctx, "DEFAULT_IMAGE_SOURCE_URL", url);
        if (r < 0)
                return r;

        src = spec_image(spec);
        if (!src || spec_field_set(&src->url, url) < 0)
                return oom(ctx);
        /* start-vm.sh has no checksum variable: hydrad's own HYDRA_IMAGE_CHECKSUM ("sha256:HEX"/"sha512:HEX") or
         * HYDRA_IMAGE_SUMS_URL (a SHA256SUMS/SHA512SUMS file naming DEFAULT_IMAGE) give one; hydrad checks both
         * at RegisterVm. Else cloud.debian.org publishes SHA512SUMS next to the images: hydrad verifies the
         * download with it. */
        checksum = env_get(ctx, "HYDRA_IMAGE_CHECKSUM", NULL);
        sums_url = env_get(ctx, "HYDRA_IMAGE_SUMS_URL", NULL);
        if (checksum && sums_url)
                return hydra_error_set(ctx->err, -EINVAL, "HYDRA_IMAGE_CHECKSUM and HYDRA_IMAGE_SUMS_URL are both set "
                                       "(allowed: one of them)");
        if (checksum)
                return spec_field_set(&src->checksum, checksum) < 0 ? oom(ctx) : 0;
        if (sums_url) {
                r = check_url(ctx, "HYDRA_IMAGE_SUMS_URL", sums_url);
                if (r < 0)
                        return r;
                return spec_field_set(&src->sums_url, sums_url) < 0 ? oom(ctx) : 0;
        }
        if (host_is(source, "cloud.debian.org")) {
                if (asprintf(&sums, "%s/SHA512SUMS", source) < 0 || spec_field_set(&src->sums_url, sums) < 0)
                        return oom(ctx);
        }
        return 0;
}

static int map_disk_policy(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        long copy, reuse;
        int r;

        r = env_int(ctx, "COPY_IMAGE_BACKUP", "0", &copy);
        if (r < 0)
                return r;
        r = env_int(ctx, "ALWAYS_REUSE_DISK_IMAGE", "0", &reuse);
        if (r < 0)
                return r;
        spec->keep_pristine = copy > 0;
        spec->reuse_disk_on_change = reuse > 0;
        return 0;
}

/* The rimdworkspace artifact: the bare kernel's files (RUN_BARE_KERNEL=1), or only the encrypted-image tools
 * (ENABLE_CONTAINERD_RIMD_PROXY=1 with a cloud image: the script downloads the artifact for them too). */
static int map_bare(EnvContext *ctx, Hydra__V1__VmSpec *spec, bool run_bare, bool tools) {
        const char *url = env_get(ctx, "DEFAULT_RIMD_ARTIFACT_URL",
                                  "https://gitlab.arm.com/api/v4/projects/10711/packages/generic/rimdworkspace/"
                                  "Q2_2026_1/rimdworkspace.tar.gz");
        const char *user = env_get(ctx, "RIMD_ARTIFACT_URL_USER", NULL);
        const char *pass = env_get(ctx, "RIMD_ARTIFACT_URL_PASS", NULL);
        const char *token = env_get(ctx, "RIMD_ARTIFACT_URL_TOKEN", NULL);
        Hydra__V1__BareKernel *bare;
        Hydra__V1__Source *src;
        int r;

        r = check_url(ctx, "DEFAULT_RIMD_ARTIFACT_URL", url);
        if (r < 0)
                return r;
        src = spec_bare_artifact(spec);
        bare = spec_bare(spec);
        if (!src || !bare)
                return oom(ctx);
        if (spec_field_set(&src->url, url) < 0 || spec_field_set(&src->user, user) < 0 ||
            spec_field_set(&src->token, token) < 0)
                return oom(ctx);
        /* The script passes --password only with --user. */
        if (pass && !user)
                note(ctx, "RIMD_ARTIFACT_URL_PASS is ignored without RIMD_ARTIFACT_URL_USER (as start-vm.sh)");
        else if (spec_field_set(&src->password, pass) < 0)
                return oom(ctx);
        if (env_set("DEFAULT_RIMD_ARTIFACT_FILENAME"))
                note(ctx, "DEFAULT_RIMD_ARTIFACT_FILENAME is not used: hydrad caches downloads by content and "
                     "recognizes the archive by its contents");

        if (spec_field_set(&bare->dir, env_get(ctx, "DEFAULT_RIMD_ARTIFACT_DIR", "rimdworkspace_Q2_2026_1")) < 0)
                return oom(ctx);
        bare->encrypted_tools = tools;
        if (!run_bare)
                return 0;
        if (spec_field_set(&bare->kernel, env_get(ctx, "DEFAULT_RIMD_KERNEL_FILENAME", "Image.gz")) < 0 ||
            spec_field_set(&bare->kernel_version, env_get(ctx, "DEFAULT_RIMD_KERNEL_VERSION", "-6.16")) < 0 ||
            spec_field_set(&bare->initrd, env_get(ctx, "DEFAULT_RIMD_IMAGE_FILENAME",
                                                  "initramfs.linux_arm64.cpio")) < 0 ||
            spec_field_set(&bare->rootfs, env_get(ctx, "DEFAULT_RIMD_FILESYSTEM_FILENAME", "something.qcow2")) < 0)
                return oom(ctx);
        return 0;
}

/* `echo ${VM_PASSWORD} | openssl passwd -6 -salt ${VM_SALT} -stdin`: the unquoted expansion splits the password
 * into words that echo joins with single spaces. Returns the phrase the script hashes, or NULL on OOM. */
static char *script_password_phrase(EnvContext *ctx, const char *password) {
        char *out = malloc(strlen(password) + 1), *o = out;
        const char *p = password;

        if (!out)
                return NULL;
        while (*p) {
                size_t word;

                p += strspn(p, " \t\n");
                word = strcspn(p, " \t\n");
                if (word == 0)
                        break;
                if (o > out)
                        *o++ = ' ';
                memcpy(o, p, word);
                o += word;
                p += word;
        }
        *o = '\0';
        if (strpbrk(out, "*?["))
                note(ctx, "VM_PASSWORD holds '*', '?' or '[': start-vm.sh's unquoted echo may have expanded them "
                     "against the files of its directory; if the password does not work, set VM_PASSWORD_ENCRYPTED");
        return out;
}

static int map_guest(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        const char *user = env_get(ctx, "VM_USERNAME", "hailhydra"), *host = env_get(ctx, "VM_HOSTNAME", "hydravm");
        const char *encrypted = env_get(ctx, "VM_PASSWORD_ENCRYPTED", NULL);
        const char *key = env_get(ctx, "VM_SSH_AUTHORIZED_KEY", NULL);
        const char *key_file = env_get(ctx, "VM_SSH_KEY_FILENAME", NULL);
        _cleanup_free_ char *found = NULL;
        Hydra__V1__Guest *g = spec_guest(spec);
        char *hash = NULL;
        int r;

        if (!g)
                return oom(ctx);
        /* hydrad's rules for these fields (field.h): what passes here passes RegisterVm and StartVm. */
        if ((r = field_check_username("VM_USERNAME", user, ctx->err)) < 0 ||
            (r = field_check_hostname("VM_HOSTNAME", host, ctx->err)) < 0)
                return r;
        if (spec_field_set(&g->username, user) < 0 || spec_field_set(&g->hostname, host) < 0)
                return oom(ctx);

        if (encrypted) {
                r = field_check_password_hash("VM_PASSWORD_ENCRYPTED", encrypted, ctx->err);
                if (r < 0)
                        return r;
                if (spec_field_set(&g->password_hash, encrypted) < 0)
                        return oom(ctx);
        } else {
                /* The same hash the script makes: a VM migrated from it keeps its password. */
                char *phrase = script_password_phrase(ctx, env_get(ctx, "VM_PASSWORD", "hailhydra"));

                if (!phrase)
                        return oom(ctx);
                r = password_hash_sha512(phrase, env_get(ctx, "VM_SALT", "123456"), &hash, ctx->err);
                password_free(phrase);
                if (r < 0)
                        return hydra_error_prefix(ctx->err, "VM_PASSWORD/VM_SALT: ");
                r = spec_field_set(&g->password_hash, hash);
                free(hash);
                if (r < 0)
                        return oom(ctx);
        }

        /* check_ssh_authorized_key: the key, else the file, else (not root) the first ~/.ssh/id*.pub. */
        if (key) {
                if (strchr(key, '\n'))
                        return hydra_error_set(ctx->err, -EINVAL, "VM_SSH_AUTHORIZED_KEY holds more than one line: "
                                               "give one key (or a file in VM_SSH_KEY_FILENAME)");
                if (spec_strv_append(&g->ssh_authorized_keys, &g->n_ssh_authorized_keys, key) < 0)
                        return oom(ctx);
                return 0;
        }
        if (!key_file) {
                const char *home = getenv("HOME");
                _cleanup_free_ char *pattern = NULL;
                glob_t gl = {};

                if (ctx->root)
                        return 0;
                if (isempty(home)) {
                        struct passwd *pw = getpwuid(getuid());
                        home = pw ? pw->pw_dir : NULL;
                }
                if (isempty(home) || asprintf(&pattern, "%s/.ssh/id*.pub", home) < 0)
                        return 0;
                if (glob(pattern, 0, NULL, &gl) == 0 && gl.gl_pathc > 0)
                        found = strdup(gl.gl_pathv[0]);
                globfree(&gl);
                if (!found)
                        return 0;
                key_file = found;
        }

        {
                _cleanup_free_ char *line = NULL;
                size_t size = 0;
                FILE *f = fopen(key_file, "re");

                if (!f) {
                        /* The script goes on without a key (cat ... || true): so do we, but say so. */
                        note(ctx, "VM_SSH_KEY_FILENAME: cannot read '%s' (%m): no SSH key for the guest", key_file);
                        return 0;
                }
                while (getline(&line, &size, f) > 0) {
                        char *s = line + strspn(line, " \t"), *e = s + strlen(s);

                        while (e > s && strchr(" \t\r\n", e[-1]))
                                *--e = '\0';
                        if (*s == '\0' || *s == '#')
                                continue;
                        if (spec_strv_append(&g->ssh_authorized_keys, &g->n_ssh_authorized_keys, s) < 0) {
                                fclose(f);
                                return oom(ctx);
                        }
                }
                fclose(f);
        }
        return 0;
}

/* '$'-separated lists (INSTALL_ADDITIONAL_DEBS, ADDITIONAL_9P_MOUNTS), as the script cuts them. Empty items are
 * skipped. Calls fn for each; stops at its first error. */
static int each_dollar_item(EnvContext *ctx, const char *list, int (*fn)(EnvContext *ctx, const char *item,
                                                                        void *userdata), void *userdata) {
        _cleanup_free_ char *copy = strdup(list);
        char *save = NULL;
        int r;

        if (!copy)
                return oom(ctx);
        for (char *item = strtok_r(copy, "$", &save); item; item = strtok_r(NULL, "$", &save)) {
                r = fn(ctx, item, userdata);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int add_deb(EnvContext *ctx, const char *item, void *userdata) {
        Hydra__V1__Software *sw = userdata;
        int r;

        /* The guest downloads it: the rule hydrad applies (field.h), not the one for what hydrad fetches. */
        r = field_check_guest_url("INSTALL_ADDITIONAL_DEBS", item, ctx->err);
        if (r < 0)
                return r;
        if (spec_strv_append(&sw->extra_debs, &sw->n_extra_debs, item) < 0)
                return oom(ctx);
        return 0;
}

/* An optional variable that goes to a string field as it is, once check accepts it. */
static int env_string(EnvContext *ctx, const char *name, int (*check)(const char *, const char *, HydraError *),
                      char **field) {
        const char *v = env_get(ctx, name, NULL);
        int r;

        if (!v)
                return 0;
        r = check(name, v, ctx->err);
        if (r < 0)
                return r;
        return spec_field_set(field, v) < 0 ? oom(ctx) : 0;
}

/* The nelly pieces, hydrad's own variables and the crismux installer's: the isolated VM's sandbox image (an
 * offline device cannot pull it), the host VM's crismux download. */
static int map_nelly(EnvContext *ctx, Hydra__V1__Software *sw) {
        int r;

        if ((r = env_string(ctx, "HYDRA_SANDBOX_IMAGE", field_check_image_ref, &sw->sandbox_image)) < 0 ||
            (r = env_string(ctx, "HYDRA_SANDBOX_IMAGE_URL", field_check_guest_url, &sw->sandbox_image_url)) < 0 ||
            (r = env_string(ctx, "CRISMUX_ARTIFACT_URL", field_check_guest_url, &sw->crismux_url)) < 0 ||
            (r = env_string(ctx, "CRISMUX_SHA256", field_check_sha256, &sw->crismux_sha256)) < 0)
                return r;
        return 0;
}

static int map_software(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        Hydra__V1__Software *sw = spec_software(spec);
        const char *kernel = env_get(ctx, "KERNEL_VERSION", NULL), *kv = env_get(ctx, "DEFAULT_KERNEL_VERSION", NULL);
        const char *csi = env_get(ctx, "DEFAULT_CSI_GRPC_PROXY_URL", "https://github.com/democratic-csi/"
                                  "csi-grpc-proxy/releases/download/v0.5.6/csi-grpc-proxy-v0.5.6-linux-");
        const char *k3s = env_get(ctx, "K3S_VERSION_INSTALL", "v1.32.6+k3s1");
        _cleanup_free_ char *package = NULL;
        long disable, diod, reboot;
        bool update, upgrade;
        int r;

        if (!sw)
                return oom(ctx);
        if ((r = env_int(ctx, "DISABLE_CONTAINERD_CSI_PROXY", "0", &disable)) < 0 ||
            (r = env_int(ctx, "ENABLE_K3S_DIOD", "0", &diod)) < 0 ||
            (r = env_int(ctx, "ENABLE_REBOOT_AFTER_INSTALLATION", "0", &reboot)) < 0)
                return r;
        /* start-vm.sh's seed always updates and upgrades; hydrad's variables can turn either off (a device
         * without a mirror). */
        if ((r = env_bool(ctx, "HYDRA_PACKAGE_UPDATE", true, &update)) < 0 ||
            (r = env_bool(ctx, "HYDRA_PACKAGE_UPGRADE", true, &upgrade)) < 0)
                return r;
        sw->disable_containerd_proxy = disable != 0;
        sw->k3s_diod = diod > 0;
        sw->reboot_after_install = reboot > 0;
        sw->package_update = update;
        sw->package_upgrade = upgrade;

        r = field_check_guest_url("DEFAULT_CSI_GRPC_PROXY_URL", csi, ctx->err);
        if (r < 0)
                return r;
        r = field_check_k3s_version("K3S_VERSION_INSTALL", k3s, ctx->err);
        if (r < 0)
                return r;
        if (spec_field_set(&sw->csi_grpc_proxy_url, csi) < 0 || spec_field_set(&sw->k3s_version, k3s) < 0)
                return oom(ctx);
        r = map_nelly(ctx, sw);
        if (r < 0)
                return r;

        /* KERNEL_VERSION is a package name; DEFAULT_KERNEL_VERSION a version the script makes one of. */
        if (!kernel && kv) {
                if (asprintf(&package, "linux-image-%s-%s", kv, ctx->arch) < 0)
                        return oom(ctx);
                kernel = package;
        }
        if (kernel) {
                const char *name = package ? "DEFAULT_KERNEL_VERSION" : "KERNEL_VERSION";
                r = field_check_package(name, kernel, ctx->err);
                if (r < 0)
                        return r;
                if (spec_field_set(&sw->kernel_package, kernel) < 0)
                        return oom(ctx);
        }
        return each_dollar_item(ctx, env_get(ctx, "INSTALL_ADDITIONAL_DEBS", ""), add_deb, sw);
}

static int map_network(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        const char *prefix = env_get(ctx, "DEFAULT_NETWORK_PREFIX", "10.0.2");
        _cleanup_free_ char *ip = NULL, *gw = NULL, *dns = NULL;
        const char *values[3], *names[3] = { "DEFAULT_DEVICE_IP", "DEFAULT_GATEWAY_IP", "DEFAULT_DNS_IP" };
        Hydra__V1__Network *n = spec_network(spec);

        if (!n || asprintf(&ip, "%s.15", prefix) < 0 || asprintf(&gw, "%s.2", prefix) < 0 ||
            asprintf(&dns, "%s.3", prefix) < 0)
                return oom(ctx);
        values[0] = env_get(ctx, names[0], ip);
        values[1] = env_get(ctx, names[1], gw);
        values[2] = env_get(ctx, names[2], dns);
        for (size_t i = 0; i < 3; i++)
                if (!ipv4_valid(values[i]))
                        return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is not an IPv4 address%s", names[i],
                                               values[i], env_set(names[i]) ? "" : " (check DEFAULT_NETWORK_PREFIX, "
                                               "e.g. 10.0.2)");
        if (spec_field_set(&n->guest_ip, values[0]) < 0 || spec_field_set(&n->gateway, values[1]) < 0 ||
            spec_field_set(&n->dns, values[2]) < 0)
                return oom(ctx);
        n->prefix_len = 24; /* the script writes /24 and 255.255.255.0 */
        return 0;
}

/* One "HOST:GUEST" of the redirect list, as the script's check_ports_redirection accepts it: its regex wants
 * two or more digits, the first not 0; we also want a port (at most 65535). origin names the variable. */
static int add_redirect(Hydra__V1__VmSpec *spec, EnvContext *ctx, const char *item, const char *origin) {
        const char *colon = strchr(item, ':');
        unsigned long ports[2];
        const char *parts[2];
        size_t lens[2];

        if (!colon)
                goto bad;
        parts[0] = item;
        lens[0] = (size_t) (colon - item);
        parts[1] = colon + 1;
        lens[1] = strlen(parts[1]);
        for (size_t i = 0; i < 2; i++) {
                if (lens[i] < 2 || lens[i] > 5 || parts[i][0] == '0' || strspn(parts[i], "0123456789") != lens[i])
                        goto bad;
                ports[i] = strtoul(parts[i], NULL, 10);
                if (ports[i] > 65535)
                        goto bad;
        }
        if (spec_add_forward(spec, "127.0.0.1", (uint32_t) ports[0], (uint32_t) ports[1], "tcp") < 0)
                return oom(ctx);
        return 0;

bad:
        return hydra_error_set(ctx->err, -EINVAL, "%s: '%s' is not HOST_PORT:GUEST_PORT (start-vm.sh's format: "
                               "<external>:<internal> pairs separated by ';', ports 10-65535, e.g. "
                               "30800:8000;30801:8001)", origin, item);
}

/* check_ports_redirection: DEFAULT_KVM_PORTS_REDIRECT, then sshd, containerd, diod and rimd, each when the
 * script adds it. Bound to 127.0.0.1, where the script binds 0.0.0.0 (a deliberate fix: containerd's API has
 * no authentication). */
static int map_forwards(EnvContext *ctx, Hydra__V1__VmSpec *spec, bool run_bare, bool proxy_disabled,
                        bool k3s_diod) {
        const char *list = env_get(ctx, "DEFAULT_KVM_PORTS_REDIRECT", "");
        const struct {
                const char *name;
                const char *def;
                const char *guest;
                bool on;
        } extra[] = {
                { "DEFAULT_KVM_HOST_SSHD_PORT", "5555", "22", true },
                { "DEFAULT_KVM_HOST_CONTAINERD_PORT", "35000", "35000", !proxy_disabled },
                { "DEFAULT_KVM_HOST_DIOD_PORT", "30564", "564", k3s_diod },
                { "DEFAULT_KVM_HOST_RIMD_PORT", "35001", "35001", run_bare },
        };
        int r;

        if (!isempty(list)) {
                _cleanup_free_ char *copy = strdup(list);
                char *p, *item;

                if (!copy)
                        return oom(ctx);
                /* strsep, not strtok: an empty item ("1:2;;3:4", a trailing ';') is an error, as in the regex. */
                for (p = copy; (item = strsep(&p, ";"));) {
                        r = add_redirect(spec, ctx, item, "DEFAULT_KVM_PORTS_REDIRECT");
                        if (r < 0)
                                return r;
                }
        }
        for (size_t i = 0; i < ELEMENTSOF(extra); i++) {
                const char *port = env_get(ctx, extra[i].name, extra[i].def);
                _cleanup_free_ char *item = NULL;

                if (!extra[i].on || isempty(port))
                        continue;
                if (asprintf(&item, "%s:%s", port, extra[i].guest) < 0)
                        return oom(ctx);
                r = add_redirect(spec, ctx, item, extra[i].name);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int add_mount(EnvContext *ctx, const char *item, void *userdata) {
        Hydra__V1__VmSpec *spec = userdata;
        const char *bar = strchr(item, '|');
        _cleanup_free_ char *host = NULL, *host_abs = NULL;
        const char *guest;
        int r;

        if (!bar || bar == item || isempty(bar + 1) || strchr(bar + 1, '|'))
                return hydra_error_set(ctx->err, -EINVAL, "ADDITIONAL_9P_MOUNTS: '%s' is not HOST_DIR|GUEST_DIR "
                                       "(items separated by '$')", item);
        guest = bar + 1;
        r = field_check_guest_path("ADDITIONAL_9P_MOUNTS (guest directory)", guest, ctx->err);
        if (r < 0)
                return r;
        host = strndup(item, (size_t) (bar - item));
        if (!host)
                return oom(ctx);
        host_abs = absolute_from_cwd(host);
        if (!host_abs || spec_add_share(spec, host_abs, guest) < 0)
                return oom(ctx);
        return 0;
}

static int map_shares(EnvContext *ctx, Hydra__V1__VmSpec *spec) {
        Hydra__V1__Shares *sh = spec_shares(spec);
        long disable, external;
        int r;

        if (!sh)
                return oom(ctx);
        if ((r = env_int(ctx, "DISABLE_9P_KUBELET_MOUNTS", "0", &disable)) < 0 ||
            (r = env_int(ctx, "EXTERNAL_9P_KUBELET_MOUNTS", "0", &external)) < 0)
                return r;
        if (disable != 0)
                sh->kubelet = HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_NONE;
        else if (external != 0) {
                sh->kubelet = HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_TCP;
                sh->diod_port = 30564; /* the script's fstab lines name this port */
        } else
                sh->kubelet = HYDRA__V1__KUBELET_SHARES__KUBELET_SHARES_VIRTIO;

        /* check_k3s_log_pods_dir: DIR_K3S_VAR, else by who runs it. */
        if (disable == 0) {
                const char *dir = env_get(ctx, "DIR_K3S_VAR", NULL);
                _cleanup_free_ char *def = NULL, *abs = NULL;

                if (!dir) {
                        _cleanup_free_ char *cwd = get_current_dir_name();

                        if (!cwd || asprintf(&def, "%s/k3s-var", cwd) < 0)
                                return oom(ctx);
                        dir = ctx->root ? env_get(ctx, "DEFAULT_DIR_K3S_VAR_LINUX_ROOT", NULL)
                                        : env_get(ctx, "DEFAULT_DIR_K3S_VAR_LINUX_NON_ROOT", def);
                }
                if (dir) {
                        abs = absolute_from_cwd(dir);
                        if (!abs || spec_field_set(&sh->kubelet_host_dir, abs) < 0)
                                return oom(ctx);
                }
        }
        return each_dollar_item(ctx, env_get(ctx, "ADDITIONAL_9P_MOUNTS", ""), add_mount, spec);
}

static int map_devices(EnvContext *ctx, Hydra__V1__VmSpec *spec, bool run_bare) {
        Hydra__V1__Devices *d = spec_devices(spec);
        const char *shmem = env_get(ctx, "SHMEM_TYPE", "none");
        long vsock, gpu;
        int r, s;

        if (!d)
                return oom(ctx);
        if ((r = env_int(ctx, "ENABLE_VSOCK_LINUX", "0", &vsock)) < 0 ||
            (r = env_int(ctx, "ENABLE_VIRTIO_GPU", "0", &gpu)) < 0)
                return r;
        /* The script adds the vsock device to the bare-kernel command line only. */
        if (vsock > 0 && run_bare) {
                d->vsock = true;
                d->vsock_cid = 3;
        } else if (vsock > 0)
                note(ctx, "ENABLE_VSOCK_LINUX is ignored without RUN_BARE_KERNEL=1 (as start-vm.sh); [devices] "
                     "vsock = true in a spec file adds it");
        if (gpu > 0) {
                d->gpu = true;
                r = env_u32(ctx, "DEFAULT_VIRTIO_GPU_VRAM", "4", &d->gpu_vram_gib);
                if (r < 0)
                        return r;
        }

        s = shmem_from_name(shmem);
        if (s < 0)
                return hydra_error_set(ctx->err, -EINVAL, "SHMEM_TYPE: '%s' is not a shared memory type (allowed: "
                                       "none, nvdimm, ivshmem)", shmem);
        d->shmem = (Hydra__V1__Shmem) s;
        if (s != HYDRA__V1__SHMEM__SHMEM_NONE) {
                _cleanup_free_ char *abs = NULL;

                r = env_u32(ctx, "KVM_SHMEM_SIZE", "1", &d->shmem_size_gib);
                if (r < 0)
                        return r;
                /* Unset: hydrad's own file in the VM's state dir, not the script's /dev/shm/shmem-VM_HOSTNAME:
                 * hydrad creates a backing file nowhere else (issue 9). */
                if (isempty(env_get(ctx, "DEFAULT_KVM_SHMEM_PATH", NULL)))
                        return 0;
                abs = absolute_from_cwd(env_get(ctx, "DEFAULT_KVM_SHMEM_PATH", NULL));
                if (!abs || spec_field_set(&d->shmem_path, abs) < 0)
                        return oom(ctx);
        }
        return 0;
}

int spec_from_env(Hydra__V1__VmSpec *spec, const char *preset, FILE *notes, HydraError *err) {
        EnvContext ctx = {
                .notes = notes,
                .err = err,
        };
        const char *user = getenv("USER");
        long run_bare, rimd_proxy, disable_proxy, diod;
        int r;

        if (preset) {
                ctx.preset = preset_find(preset);
                if (!ctx.preset)
                        return hydra_error_set(err, -EINVAL, "--preset: '%s' is not a preset (known: %s)", preset,
                                               fromenv_preset_names());
        }
        ctx.root = (user && streq(user, "root")) || geteuid() == 0;

        r = refuse_macos(&ctx);
        if (r < 0)
                return r;
        note_elsewhere(&ctx);
        r = host_arch(&ctx);
        if (r < 0)
                return r;

        if ((r = env_int(&ctx, "RUN_BARE_KERNEL", "0", &run_bare)) < 0 ||
            (r = env_int(&ctx, "ENABLE_CONTAINERD_RIMD_PROXY", "0", &rimd_proxy)) < 0 ||
            (r = env_int(&ctx, "DISABLE_CONTAINERD_CSI_PROXY", "0", &disable_proxy)) < 0 ||
            (r = env_int(&ctx, "ENABLE_K3S_DIOD", "0", &diod)) < 0)
                return r;

        r = map_size(&ctx, spec);
        if (r >= 0)
                r = map_firmware(&ctx, spec);
        if (r >= 0)
                r = map_disk_policy(&ctx, spec);
        if (r < 0)
                return r;

        if (run_bare == 0) {
                /* A cloud image with cloud-init: image, guest, software. */
                r = map_image(&ctx, spec);
                if (r >= 0 && rimd_proxy > 0)
                        r = map_bare(&ctx, spec, false, true);
                if (r >= 0)
                        r = map_guest(&ctx, spec);
                if (r >= 0)
                        r = map_software(&ctx, spec);
                if (r >= 0 && env_set("ADDITIONAL_KERNEL_COMMANDLINE"))
                        note(&ctx, "ADDITIONAL_KERNEL_COMMANDLINE is ignored without RUN_BARE_KERNEL=1 (as "
                             "start-vm.sh)");
        } else {
                /* The bare kernel: no cloud-init, so no guest or software settings. */
                const char *cmdline = env_get(&ctx, "ADDITIONAL_KERNEL_COMMANDLINE", NULL);

                r = map_bare(&ctx, spec, true, rimd_proxy > 0);
                if (r >= 0 && cmdline) {
                        Hydra__V1__KernelBoot *k = spec_kernel(spec);
                        if (!k || spec_field_set(&k->cmdline, cmdline) < 0)
                                r = oom(&ctx);
                }
                if (r >= 0 && (env_set("DEFAULT_IMAGE") || env_set("DEFAULT_IMAGE_SOURCE_URL")))
                        note(&ctx, "DEFAULT_IMAGE and DEFAULT_IMAGE_SOURCE_URL are ignored with RUN_BARE_KERNEL=1 "
                             "(as start-vm.sh)");
                if (r >= 0 && (env_set("HYDRA_PACKAGE_UPDATE") || env_set("HYDRA_PACKAGE_UPGRADE")))
                        note(&ctx, "HYDRA_PACKAGE_UPDATE and HYDRA_PACKAGE_UPGRADE are ignored with "
                             "RUN_BARE_KERNEL=1 (no cloud-init)");
        }
        if (r >= 0)
                r = map_network(&ctx, spec);
        if (r >= 0)
                r = map_forwards(&ctx, spec, run_bare != 0, disable_proxy > 0, diod != 0);
        if (r >= 0)
                r = map_shares(&ctx, spec);
        if (r >= 0)
                r = map_devices(&ctx, spec, run_bare != 0);
        if (r >= 0)
                r = map_supervision(&ctx, spec, disable_proxy > 0);
        if (r >= 0)
                r = map_start_after(&ctx, spec);
        return r < 0 ? r : 0;
}
