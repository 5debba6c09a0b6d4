/* SPDX-License-Identifier: MIT */
#include <arpa/inet.h>
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "cloudinit.h"
#include "field.h"
#include "macro.h"

/* What start-vm.sh's cloud_init_create writes, rendered from a VmSpec. Two kinds of text end up in the files:
 * our own constants (file contents as YAML literal blocks, fixed commands), and values from the spec. The latter
 * are always written as JSON strings, which YAML reads as double-quoted scalars, so no value can add structure.
 * Where a value reaches a shell (a runcmd `bash -c`), the script text stays constant and the value is passed as a
 * positional parameter ("$1"); on top of that every such value must pass a strict character check, because the
 * files it lands in (fstab, a k3s install URL) have their own syntax. */

#define LOWER "abcdefghijklmnopqrstuvwxyz"
#define UPPER "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define DIGITS "0123456789"

#define QUOTE_BUF_SIZE FIELD_QUOTE_SIZE

#define MAX_PATH 4096U
#define MAX_URL 4096U
#define B64_LINE 80U /* as start-vm.sh's base64 -w 80 */

/* Mount tags of the extra shares start at host100 (host0 and host1 are the kubelet shares). */
#define EXTRA_SHARE_FIRST_TAG 100U

/* The encrypted-container tools, in the order start-vm.sh writes them; each lands in /usr/bin/NAME.new and is
 * moved over /usr/bin/NAME by runcmd. */
static const char *const tool_names[] = { "ctr-enc", "ctd-decoder", "rimd-keyprovider-proxy" };

/* The name the guest's NIC gets. start-vm.sh configured six guessed names (enp0s1 ... eth0) with the same
 * address; on an ifupdown image that fails networking.service on every boot ("RTNETLINK answers: File exists":
 * enp0s3 is an alternative name of ens3). Instead, one stanza matches the NIC by the MAC address QEMU gives it
 * and renames it: cloud-init renames it at first boot and writes a udev rule (ifupdown: 70-persistent-net.rules)
 * that keeps the name on later boots, so the name is the same whatever the machine type's PCI layout. */
#define INTERFACE_NAME "eth0"

/* --- the files' fixed contents (start-vm.sh's heredocs, after the shell expanded them) --- */

static const char csi_grpc_proxy_unit[] =
        "[Unit]\n"
        "Description=TCP proxy for containerd\n"
        "After=containerd.service\n"
        "\n"
        "[Service]\n"
        "Environment=\"PROXY_TO=unix:///run/containerd/containerd.sock\"\n"
        "Environment=\"BIND_TO=tcp://0.0.0.0:35000\"\n"
        "ExecStart=/usr/bin/csi-grpc-proxy\n"
        "\n"
        "Type=simple\n"
        "Delegate=yes\n"
        "KillMode=process\n"
        "Restart=always\n"
        "RestartSec=5\n"
        "TimeoutSec=infinity\n"
        "\n"
        "# Having non-zero Limit*s causes performance problems due to accounting overhead\n"
        "# in the kernel. We recommend using cgroups to do container-local accounting.\n"
        "LimitNPROC=infinity\n"
        "LimitCORE=infinity\n"
        "\n"
        "# Comment TasksMax if your systemd version does not supports it.\n"
        "# Only systemd 226 and above support this version.\n"
        "TasksMax=infinity\n"
        "OOMScoreAdjust=-999\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n";

static const char wait_for_mounts_sh[] =
        "#!/bin/bash\n"
        "\n"
        "# check if mount exist on fstab\n"
        "KUBELET_MOUNT=/var/lib/kubelet\n"
        "PODS_MOUNT=/var/log/pods\n"
        "\n"
        "KUBELET_FSTAB=$(grep \"${KUBELET_MOUNT}\" /etc/fstab)\n"
        "PODS_FSTAB=$(grep \"${PODS_MOUNT}\" /etc/fstab)\n"
        "\n"
        "if [ ! -z \"${KUBELET_FSTAB}\" ]\n"
        "then\n"
        "\tfindmnt \"${KUBELET_MOUNT}\" >/dev/null ||\n"
        "\twhile true\n"
        "\tdo\n"
        "\t\techo \"Trying to mount ${KUBELET_MOUNT}\"\n"
        "\t\tmount \"${KUBELET_MOUNT}\"\n"
        "\t\tif [ $? -eq 0 ]\n"
        "\t\tthen\n"
        "\t\t\tbreak\n"
        "\t\tfi\n"
        "\t\tsleep 5\n"
        "\tdone\n"
        "fi\n"
        "if [ ! -z \"${PODS_FSTAB}\" ]\n"
        "then\n"
        "\tfindmnt \"${PODS_MOUNT}\" >/dev/null ||\n"
        "\twhile true\n"
        "\tdo\n"
        "\t\techo \"Trying to mount ${PODS_MOUNT}\"\n"
        "\t\tmount \"${PODS_MOUNT}\"\n"
        "\t\tif [ $? -eq 0 ]\n"
        "\t\tthen\n"
        "\t\t\tbreak\n"
        "\t\tfi\n"
        "\t\tsleep 5\n"
        "\tdone\n"
        "fi\n"
        "exit 0\n";

/* A format: %s is the sandbox image (field_check_image_ref(): no quote or backslash can reach the TOML string). */
static const char containerd_config_toml[] =
        "version = 2\n"
        "\n"
        "[debug]\n"
        "    level = \"debug\"\n"
        "  \n"
        "[stream_processors]\n"
        "    [stream_processors.\"io.containerd.ocicrypt.decoder.v1.tar.gzip\"]\n"
        "        accepts = [\"application/vnd.oci.image.layer.v1.tar+gzip+encrypted\"]\n"
        "        returns = \"application/vnd.docker.image.rootfs.diff.tar.gzip\"\n"
        "        path = \"/usr/bin/ctd-decoder-rimd\"\n"
        "        env = [\"OCICRYPT_KEYPROVIDER_CONFIG=/ocicrypt-keyprovider.conf\"]\n"
        "        key_provider = \"rimd\"\n"
        "    [stream_processors.\"io.containerd.ocicrypt.decoder.v1.tar.zstd\"]\n"
        "        accepts = [\"application/vnd.oci.image.layer.v1.tar+zstd+encrypted\"]\n"
        "        returns = \"application/vnd.oci.image.layer.v1.tar+zstd\"\n"
        "        path = \"/usr/bin/ctd-decoder-rimd\"\n"
        "        env = [\"OCICRYPT_KEYPROVIDER_CONFIG=/ocicrypt-keyprovider.conf\"]\n"
        "        key_provider = \"rimd\"\n"
        "    [stream_processors.\"io.containerd.ocicrypt.decoder.v1.tar\"]\n"
        "        accepts = [\"application/vnd.oci.image.layer.v1.tar+encrypted\"]\n"
        "        returns = \"application/vnd.oci.image.layer.v1.tar\"\n"
        "        path = \"/usr/bin/ctd-decoder-rimd\"\n"
        "        env = [\"OCICRYPT_KEYPROVIDER_CONFIG=/ocicrypt-keyprovider.conf\"]\n"
        "        key_provider = \"rimd\"\n"
        "\n"
        "[plugins]\n"
        "    [plugins.\"io.containerd.keyprovider.v1\".rimd]\n"
        "        path = \"/usr/bin/rimd-keyprovider-proxy\"\n"
        "        args = [\"--dummy\"]\n"
        "    [plugins.\"io.containerd.grpc.v1.cri\"]\n"
        "        sandbox_image = \"%s\"\n"
        "        [plugins.\"io.containerd.grpc.v1.cri\".cni]\n"
        "            bin_dir = \"/usr/lib/cni\"\n"
        "            conf_dir = \"/etc/cni/net.d\"\n"
        "    [plugins.\"io.containerd.internal.v1.opt\"]\n"
        "        path = \"/var/lib/containerd/opt\"\n"
        "    [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n"
        "        default_runtime_name = \"nelly\"\n"
        "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nelly]\n"
        "        privileged_without_host_devices = false\n"
        "        runtime_type = \"io.containerd.runc.v2\"\n"
        "    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nelly.options]\n"
        "        BinaryName = \"/usr/sbin/runc\"\n"
        "        NoPivotRoot = true\n"
        "        CriuImagePath = \"\"\n"
        "        CriuPath = \"\"\n"
        "        CriuWorkPath = \"\"\n"
        "        IoGid = 0\n";

/* The RuntimeClass that sends a pod to the isolated VM, for k3s's auto-deploy directory: the host VM alone yields
 * a cluster that knows nelly (start-vm.sh leaves it to the add-crismux chart). */
static const char nelly_runtimeclass_yaml[] =
        "apiVersion: node.k8s.io/v1\n"
        "kind: RuntimeClass\n"
        "metadata:\n"
        "  name: nelly\n"
        "handler: nelly\n";

static const char ocicrypt_keyprovider_dummy_conf[] =
        "{\n"
        "  \"key-providers\": {\n"
        "    \"rimd\": {\n"
        "      \"cmd\": {\n"
        "        \"path\": \"/usr/bin/rimd-keyprovider-proxy\",\n"
        "        \"args\": []\n"
        "      }\n"
        "    }\n"
        "  }\n"
        "}\n";

static const char diod_conf[] =
        "--\n"
        "-- /etc/diod.conf - config file for diod distributed I/O daemon\n"
        "--\n"
        "-- NOTE: This config file is a lua script that diod runs, then extracts\n"
        "-- the value of certain globally defined variables.  See diod.conf(5).\n"
        "\n"
        "listen = { \"0.0.0.0:564\" }\n"
        "-- nwthreads = 16\n"
        "-- auth_required = 1\n"
        "auth_required = 0\n"
        "-- logdest = \"syslog:daemon:err\"\n"
        "\n"
        "exports = { \"/var/lib/kubelet\",\"/var/log/pods\" }\n"
        "\n"
        "-- allsquash = 0\n"
        "-- squashuser = \"nobody\"\n";

/* Takes '$'-separated URLs in $1 (see join_debs()). */
static const char install_debs_sh[] =
        "#!/bin/bash\n"
        "\n"
        "if [ -z \"$1\" ]\n"
        "then\n"
        "        exit 0\n"
        "fi\n"
        "\n"
        "mkdir /tmp/install_debs > /dev/null\n"
        "cd /tmp/install_debs\n"
        "\n"
        "DEBS=\"$1\"\n"
        "while [ ! -z \"${DEBS}\" ]\n"
        "do\n"
        "        DEBS_USED=$(echo \"${DEBS}\" | cut -d '$' -f 1)\n"
        "        DEBS=$(echo \"${DEBS}\" | cut -d '$' -f 2-)\n"
        "        if [ \"${DEBS}\" == \"${DEBS_USED}\" ]\n"
        "        then\n"
        "                DEBS=\"\"\n"
        "        fi\n"
        "        wget -O debs_install.deb \"${DEBS_USED}\"\n"
        "        if [ -e debs_install.deb ]\n"
        "        then\n"
        "                dpkg -i debs_install.deb\n"
        "        fi\n"
        "done\n"
        "exit 0\n";

static const char set_term_size_sh[] =
        "#!/bin/bash\n"
        "\n"
        "IFS=\";\"\n"
        "echo -en \"\\e[18t\"\n"
        "read -s -n 20 -d \"t\" t r c\n"
        "echo \"rows is $r, cols is $c\"\n"
        "stty rows $r cols $c\n";

static const char issue_hydra[] =
        "Hydra VM installed and configured. SSH and csi-grpc-proxy are running.\n"
        "You can login on this terminal with username/password provided\n"
        "or using ssh with key provided.\n";

/* Shell snippets for runcmd. Constant: values reach them only as positional parameters. */
#define SH_APPEND_FSTAB "printf '%s\\n' \"$1\" >> /etc/fstab"
#define SH_INSTALL_K3S "wget -O - https://get.k3s.io | INSTALL_K3S_VERSION=\"$1\" sh -"
/* The installer's defaults stand for an empty URL or checksum. */
#define SH_INSTALL_CRISMUX                                                                                     \
        "NELLY_HOSTNAME=\"$1\" CRISMUX_ARTIFACT_URL=\"$2\" CRISMUX_SHA256=\"$3\" /usr/bin/install_crismux.sh install"
/* The sandbox image for a device that cannot pull it: into the CRI plugin's namespace. */
#define SH_IMPORT_SANDBOX                                                                                      \
        "wget -q -O /var/lib/containerd/hydra-sandbox-image.tar \"$1\" && "                                         \
        "ctr -n k8s.io images import /var/lib/containerd/hydra-sandbox-image.tar && "                          \
        "rm -f /var/lib/containerd/hydra-sandbox-image.tar"

/* --- checks: each names the field and the value (quoted, escaped) and says what is allowed --- */

/* Non-empty, made only of the characters in allowed (described for the reader by allowed_desc). */
static int check_chars(const char *field, const char *value, const char *allowed, const char *allowed_desc,
                       HydraError *err) {
        char q[QUOTE_BUF_SIZE], c[16];
        size_t n = strspn(value, allowed);

        if (value[0] == '\0')
                return hydra_error_set(err, -EINVAL, "%s: empty (allowed: %s)", field, allowed_desc);
        if (value[n] != '\0')
                return hydra_error_set(err, -EINVAL, "%s: '%s' contains %s (allowed: %s)", field, field_quote(q, value),
                                       field_describe_char(c, value[n]), allowed_desc);
        return 0;
}

/* --- the checked inputs --- */

/* The values to render, defaults filled in; every pointer is borrowed from the input. */
typedef struct Params {
        const VmSpec *spec;
        const char *username;
        const char *password_hash; /* NULL: the account is locked */
        const char *hostname;
        char guest_ip[INET_ADDRSTRLEN];
        char gateway[INET_ADDRSTRLEN];
        char dns[INET_ADDRSTRLEN];
        char mac[18];              /* lower case: the kernel's spelling, which udev rules compare with */
        uint32_t prefix_len;
        uint32_t diod_port;
        const char *k3s_version;
        const char *csi_url;
        const char *debian_arch;
        const char *crismux;       /* NULL: not installed */
        const char *crismux_url;   /* "": the installer's default */
        const char *crismux_sha256;/* "": none */
        const char *sandbox_image;
        const char *sandbox_image_url; /* NULL: not imported */
        const CloudInitBlob *tools[ELEMENTSOF(tool_names)];
        bool proxy;
        bool diod;
        bool nvdimm;
        bool wget;                 /* a runcmd or script runs wget */
} Params;

static const char *or_default(const char *s, const char *def) {
        return isempty(s) ? def : s;
}

/* Each spec value is checked by the rule spec.c applies at RegisterVm (field.h, vm_spec_network()): the same
 * function, so that the renderer refuses nothing RegisterVm accepted. Checked again here because the renderer
 * must not depend on its callers for what reaches YAML, fstab and a shell. */
static int check_guest(const VmSpec *spec, Params *p, HydraError *err) {
        char field[64];
        int r;

        p->username = or_default(spec->guest.username, SPEC_DEFAULT_USERNAME);
        r = field_check_username("guest.username", p->username, err);
        if (r < 0)
                return r;
        p->password_hash = isempty(spec->guest.password_hash) ? NULL : spec->guest.password_hash;
        if (p->password_hash && (r = field_check_password_hash("guest.password_hash", p->password_hash, err)) < 0)
                return r;
        p->hostname = or_default(spec->guest.hostname, SPEC_DEFAULT_HOSTNAME);
        r = field_check_hostname("guest.hostname", p->hostname, err);
        if (r < 0)
                return r;
        for (size_t i = 0; spec->guest.ssh_authorized_keys && spec->guest.ssh_authorized_keys[i]; i++) {
                (void) snprintf(field, sizeof(field), "guest.ssh_authorized_keys[%zu]", i);
                r = field_check_ssh_key(field, spec->guest.ssh_authorized_keys[i], err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_network(const VmSpec *spec, Params *p, HydraError *err) {
        const char *mac = vm_spec_mac(spec);
        SpecNetwork n;
        int r;

        r = vm_spec_network(spec, &n, err);
        if (r < 0)
                return r;
        r = field_check_mac("network.mac", mac, err);
        if (r < 0)
                return r;
        for (size_t i = 0; i < sizeof(p->mac); i++)
                p->mac[i] = (char) tolower((unsigned char) mac[i]); /* hex digits and ':' (checked) */
        if (!inet_ntop(AF_INET, &n.guest, p->guest_ip, sizeof(p->guest_ip)) ||
            !inet_ntop(AF_INET, &n.gateway, p->gateway, sizeof(p->gateway)) ||
            !inet_ntop(AF_INET, &n.dns, p->dns, sizeof(p->dns)))
                return hydra_error_set(err, -EINVAL, "network: cannot format an address");
        p->prefix_len = n.prefix_len;
        return 0;
}

static int check_software(const CloudInitInput *in, Params *p, HydraError *err) {
        const VmSpec *spec = in->spec;
        char q[QUOTE_BUF_SIZE], field[64];
        int r;

        p->proxy = !spec->software.disable_containerd_proxy;
        p->diod = spec->software.k3s_diod;

        if (p->proxy) {
                p->csi_url = or_default(spec->software.csi_grpc_proxy_url, SPEC_DEFAULT_CSI_GRPC_PROXY_URL);
                r = field_check_guest_url("software.csi_grpc_proxy_url", p->csi_url, err);
                if (r < 0)
                        return r;

                if (!isempty(in->debian_arch))
                        p->debian_arch = in->debian_arch;
                else if (spec->arch == ARCH_X86_64)
                        p->debian_arch = "amd64";
                else if (spec->arch == ARCH_AARCH64)
                        p->debian_arch = "arm64";
                else
                        return hydra_error_set(err, -EINVAL, "arch: %d is not a known architecture (allowed: "
                                               "x86_64, aarch64)", (int) spec->arch);
                r = check_chars("debian_arch", p->debian_arch, LOWER DIGITS, "a Debian architecture such as amd64",
                                err);
                if (r < 0)
                        return r;
                if (strlen(p->debian_arch) > 16)
                        return hydra_error_set(err, -EINVAL, "debian_arch: '%s' is too long",
                                               field_quote(q, p->debian_arch));
        }

        if (p->diod) {
                p->k3s_version = or_default(spec->software.k3s_version, SPEC_DEFAULT_K3S_VERSION);
                r = field_check_k3s_version("software.k3s_version", p->k3s_version, err);
                if (r < 0)
                        return r;
                p->crismux = isempty(in->crismux_installer) ? NULL : in->crismux_installer;
                p->crismux_url = strempty(spec->software.crismux_url);
                if (*p->crismux_url && (r = field_check_guest_url("software.crismux_url", p->crismux_url, err)) < 0)
                        return r;
                p->crismux_sha256 = strempty(spec->software.crismux_sha256);
                if (*p->crismux_sha256 &&
                    (r = field_check_sha256("software.crismux_sha256", p->crismux_sha256, err)) < 0)
                        return r;
        }
        if (p->proxy) {
                p->sandbox_image = or_default(spec->software.sandbox_image, SPEC_DEFAULT_SANDBOX_IMAGE);
                r = field_check_image_ref("software.sandbox_image", p->sandbox_image, err);
                if (r < 0)
                        return r;
                p->sandbox_image_url = isempty(spec->software.sandbox_image_url) ? NULL
                                                                                   : spec->software.sandbox_image_url;
                if (p->sandbox_image_url &&
                    (r = field_check_guest_url("software.sandbox_image_url", p->sandbox_image_url, err)) < 0)
                        return r;
        }

        if (!isempty(spec->software.kernel_package) &&
            (r = field_check_package("software.kernel_package", spec->software.kernel_package, err)) < 0)
                return r;

        for (size_t i = 0; spec->software.extra_debs && spec->software.extra_debs[i]; i++) {
                (void) snprintf(field, sizeof(field), "software.extra_debs[%zu]", i);
                r = field_check_guest_url(field, spec->software.extra_debs[i], err);
                if (r < 0)
                        return r;
        }
        /* csi-grpc-proxy's download, the k3s install line and install_debs.sh. */
        p->wget = p->proxy || p->diod || !strv_isempty(spec->software.extra_debs);
        return 0;
}

static int check_shares(const VmSpec *spec, Params *p, HydraError *err) {
        char field[64];
        int r;

        if ((int) spec->shares.kubelet < 0 || spec->shares.kubelet >= _KUBELET_SHARES_MAX)
                return hydra_error_set(err, -EINVAL, "shares.kubelet: %d is not known (allowed: virtio, tcp, none)",
                                       (int) spec->shares.kubelet);
        p->diod_port = spec->shares.diod_port == 0 ? SPEC_DEFAULT_DIOD_PORT : spec->shares.diod_port;
        if (p->diod_port > 65535)
                return hydra_error_set(err, -EINVAL,
                                       "shares.diod_port: %" PRIu32 " is out of range (allowed: 1-65535)",
                                       p->diod_port);
        if (spec->shares.n_extra > 0 && !spec->shares.extra)
                return hydra_error_set(err, -EINVAL, "shares.extra: %zu shares but no array", spec->shares.n_extra);
        for (size_t i = 0; i < spec->shares.n_extra; i++) {
                (void) snprintf(field, sizeof(field), "shares.extra[%zu].guest_path", i);
                r = field_check_guest_path(field, strempty(spec->shares.extra[i].guest_path), err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_devices(const VmSpec *spec, Params *p, HydraError *err) {
        if ((int) spec->devices.shmem < 0 || spec->devices.shmem >= _SHMEM_MAX)
                return hydra_error_set(err, -EINVAL,
                                       "devices.shmem: %d is not known (allowed: none, nvdimm, ivshmem)",
                                       (int) spec->devices.shmem);
        p->nvdimm = spec->devices.shmem == SHMEM_NVDIMM;
        return 0;
}

static int check_tools(const CloudInitInput *in, Params *p, HydraError *err) {
        char q[QUOTE_BUF_SIZE];
        size_t n = 0;

        if (in->n_tools > 0 && !in->tools)
                return hydra_error_set(err, -EINVAL, "tools: %zu tools but no array", in->n_tools);
        for (size_t i = 0; i < in->n_tools; i++) {
                const CloudInitBlob *b = &in->tools[i];
                size_t t;

                for (t = 0; t < ELEMENTSOF(tool_names); t++)
                        if (b->name && streq(b->name, tool_names[t]))
                                break;
                if (t == ELEMENTSOF(tool_names))
                        return hydra_error_set(err, -EINVAL, "tools[%zu]: '%s' is not a known tool (allowed: "
                                               "ctr-enc, ctd-decoder, rimd-keyprovider-proxy)",
                                               i, field_quote(q, strempty(b->name)));
                if (p->tools[t])
                        return hydra_error_set(err, -EINVAL, "tools[%zu]: '%s' is given twice", i, b->name);
                if (b->size == 0 || !b->data)
                        return hydra_error_set(err, -EINVAL, "tools[%zu]: '%s' is empty", i, b->name);
                p->tools[t] = b;
                n++;
        }
        if (in->spec->bare.encrypted_tools && n == 0)
                return hydra_error_set(err, -EINVAL, "bare.encrypted_tools: set, but no tool binaries were given to "
                                       "install in the guest");
        return 0;
}

static int check_input(const CloudInitInput *in, Params *p, HydraError *err) {
        int r;

        if (!in || !in->spec)
                return hydra_error_set(err, -EINVAL, "cloud-init: no spec");
        *p = (Params) { .spec = in->spec };
        if ((r = check_guest(in->spec, p, err)) < 0 || (r = check_network(in->spec, p, err)) < 0 ||
            (r = check_software(in, p, err)) < 0 || (r = check_shares(in->spec, p, err)) < 0 ||
            (r = check_devices(in->spec, p, err)) < 0 || (r = check_tools(in, p, err)) < 0)
                return r;
        return 0;
}

/* --- output: a memory stream with a sticky error, so that the renderers read as the files they write --- */

typedef struct Out {
        FILE *f;
        char *buf;
        size_t size;
        int r;                     /* first error; later writes are skipped */
} Out;

static int out_open(Out *o) {
        *o = (Out) {};
        o->f = open_memstream(&o->buf, &o->size);
        return o->f ? 0 : -ENOMEM;
}

/* Returns 0 and the text in ret, or the first error. Frees everything either way but the returned text. */
static int out_finish(Out *o, char **ret) {
        if (o->f) {
                if ((ferror(o->f) || fclose(o->f) != 0) && o->r == 0)
                        o->r = -ENOMEM;
                o->f = NULL;
        }
        if (o->r < 0) {
                o->buf = mfree(o->buf);
                return o->r;
        }
        *ret = TAKE_PTR(o->buf);
        return 0;
}

static void put(Out *o, const char *fmt, ...) _printf_(2, 3);
static void put(Out *o, const char *fmt, ...) {
        va_list ap;

        if (o->r < 0)
                return;
        va_start(ap, fmt);
        if (vfprintf(o->f, fmt, ap) < 0)
                o->r = -ENOMEM;
        va_end(ap);
}

/* A value as a JSON string, which is a YAML double-quoted scalar. jansson escapes '"', '\' and the C0 controls.
 * YAML also reads NEL, LS and PS (U+0085, U+2028, U+2029) as line breaks, folding them into spaces, and
 * refuses DEL, the C1 controls, U+FEFF and U+FFFE/U+FFFF raw: those are written as \u escapes. s is valid
 * UTF-8 (checked), so the byte patterns below only ever match whole characters. */
static void put_str(Out *o, const char *s) {
        json_auto_t *j = NULL;
        _cleanup_free_ char *d = NULL;

        if (o->r < 0)
                return;
        j = json_string(s);
        d = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
        if (!d) {
                o->r = -ENOMEM;
                return;
        }
        for (const unsigned char *c = (const unsigned char *) d; *c; c++) {
                unsigned cp = 0;

                if (c[0] == 0x7f)
                        cp = 0x7f;
                else if (c[0] == 0xc2 && c[1] >= 0x80 && c[1] <= 0x9f)
                        cp = c[1], c += 1;
                else if (c[0] == 0xe2 && c[1] == 0x80 && (c[2] == 0xa8 || c[2] == 0xa9))
                        cp = 0x2028U + (c[2] - 0xa8U), c += 2;
                else if (c[0] == 0xef && c[1] == 0xbb && c[2] == 0xbf)
                        cp = 0xfeff, c += 2;
                else if (c[0] == 0xef && c[1] == 0xbf && (c[2] == 0xbe || c[2] == 0xbf))
                        cp = 0xfffeU + (c[2] - 0xbeU), c += 2;

                if (cp != 0)
                        put(o, "\\u%04x", cp);
                else if (fputc(*c, o->f) == EOF)
                        o->r = -ENOMEM;
        }
}

/* "  key: |" and the text, indented by four: a literal block keeps every character of our constants. */
static void put_block(Out *o, const char *key, const char *text) {
        put(o, "  %s: |\n", key);
        for (const char *l = text; *l;) {
                size_t len = strcspn(l, "\n");

                if (len == 0)
                        put(o, "\n");
                else
                        put(o, "    %.*s\n", (int) len, l);
                l += len + (l[len] == '\n');
        }
}

/* base64 (libcrypto's encoder) in lines of B64_LINE characters, as start-vm.sh's `base64 -w 80`. */
static void put_base64(Out *o, const void *data, size_t size) {
        _cleanup_free_ unsigned char *b64 = NULL;
        size_t len;

        put(o, "  content: |\n");
        if (o->r < 0 || size == 0)
                return;
        if (size > INT_MAX / 4 * 3 - 3 || !(b64 = malloc((size + 2) / 3 * 4 + 1))) {
                o->r = -ENOMEM;
                return;
        }
        len = (size_t) EVP_EncodeBlock(b64, data, (int) size);
        for (size_t off = 0; off < len && o->r == 0; off += B64_LINE)
                put(o, "    %.*s\n", (int) (len - off < B64_LINE ? len - off : B64_LINE), (const char *) b64 + off);
}

/* One runcmd entry in list form: `- ["cmd", "arg", ...]`, every element a JSON string. */
static void put_cmd(Out *o, const char *arg, ...) __attribute__((sentinel));
static void put_cmd(Out *o, const char *arg, ...) {
        va_list ap;
        bool first = true;

        put(o, "- [");
        va_start(ap, arg);
        for (const char *a = arg; a; a = va_arg(ap, const char *)) {
                if (!first)
                        put(o, ", ");
                put_str(o, a);
                first = false;
        }
        va_end(ap);
        put(o, "]\n");
}

/* Appends line to the guest's /etc/fstab; the line reaches the shell as $1, never as script text. */
static void put_fstab_line(Out *o, const char *line) {
        put_cmd(o, "bash", "-c", SH_APPEND_FSTAB, "bash", line, NULL);
}

/* --- the four files --- */

static void render_users(Out *o, const Params *p) {
        char **keys = p->spec->guest.ssh_authorized_keys;

        put(o, "users:\n- default\n- name: ");
        put_str(o, p->username);
        put(o, "\n  primary_group: ");
        put_str(o, p->username);
        put(o, "\n  groups: users, admin\n"
               "  sudo: ALL=(ALL) NOPASSWD:ALL\n");
        if (p->password_hash) {
                put(o, "  lock_passwd: false\n  passwd: ");
                put_str(o, p->password_hash);
                put(o, "\n");
        } else
                put(o, "  lock_passwd: true\n");
        if (keys && keys[0]) {
                put(o, "  ssh_authorized_keys:\n");
                for (char **k = keys; *k; k++) {
                        put(o, "  - ");
                        put_str(o, *k);
                        put(o, "\n");
                }
        }
}

static void render_packages(Out *o, const Params *p) {
        const char *kernel = p->spec->software.kernel_package;

        if (!p->nvdimm && !p->diod && !p->proxy && !p->wget && isempty(kernel))
                return;
        put(o, "packages:\n");
        /* start-vm.sh tests `[ ${SHMEM_TYPE}=="nvdimm" ]`, one word and so always true: ndctl only for nvdimm. */
        if (p->nvdimm)
                put(o, "- ndctl\n");
        if (p->diod)
                put(o, "- diod\n");
        if (p->proxy)
                put(o, "- containerd\n- imgcrypt\n- 9mount\n");
        if (!isempty(kernel)) {
                put(o, "- ");
                put_str(o, kernel);
                put(o, "\n");
        }
        /* What the seed's own commands run: not every cloud image has it. */
        if (p->wget)
                put(o, "- wget\n");
}

static void render_write_files(Out *o, const Params *p) {
        put(o, "write_files:\n");
        if (p->proxy) {
                _cleanup_free_ char *config = NULL;

                if (asprintf(&config, containerd_config_toml, p->sandbox_image) < 0) {
                        o->r = -ENOMEM;
                        return;
                }
                put(o, "- path: /etc/systemd/system/csi-grpc-proxy.service\n");
                put_block(o, "content", csi_grpc_proxy_unit);
                put(o, "- path: /usr/bin/wait_for_mounts.sh\n"
                       "  owner: root:root\n"
                       "  permissions: '0744'\n");
                put_block(o, "content", wait_for_mounts_sh);
                put(o, "- path: /etc/containerd/config.toml.new\n");
                put_block(o, "content", config);
                put(o, "- path: /etc/containerd/ocicrypt-keyprovider-dummy.conf\n");
                put_block(o, "content", ocicrypt_keyprovider_dummy_conf);
        }
        if (p->diod) {
                put(o, "- path: /etc/diod.conf.new\n");
                put_block(o, "content", diod_conf);
                if (p->crismux) {
                        put(o, "- path: /usr/bin/install_crismux.sh\n"
                               "  owner: root:root\n"
                               "  permissions: '0744'\n"
                               "  encoding: b64\n");
                        put_base64(o, p->crismux, strlen(p->crismux));
                        put(o, "- path: /var/lib/rancher/k3s/server/manifests/hydra-nelly-runtimeclass.yaml\n");
                        put_block(o, "content", nelly_runtimeclass_yaml);
                }
        }
        for (size_t t = 0; t < ELEMENTSOF(tool_names); t++) {
                if (!p->tools[t])
                        continue;
                put(o, "- path: /usr/bin/%s.new\n"
                       "  owner: root:root\n"
                       "  permissions: '0744'\n"
                       "  encoding: b64\n",
                    tool_names[t]);
                put_base64(o, p->tools[t]->data, p->tools[t]->size);
        }
        put(o, "- path: /usr/bin/install_debs.sh\n"
               "  owner: root:root\n"
               "  permissions: '0744'\n");
        put_block(o, "content", install_debs_sh);
        put(o, "- path: /usr/bin/set-term-size.sh\n"
               "  owner: root:root\n"
               "  permissions: '0755'\n");
        put_block(o, "content", set_term_size_sh);
        put(o, "- path: /etc/issue.hydra\n");
        put_block(o, "content", issue_hydra);
}

/* install_debs.sh takes the URLs '$'-separated in one argument (URLs with '$' are refused). */
static char *join_debs(char **debs) {
        char *buf = NULL;
        size_t size = 0;
        FILE *f = open_memstream(&buf, &size);
        bool ok;

        if (!f)
                return NULL;
        for (char **d = debs; *d; d++)
                (void) fprintf(f, "%s%s", d == debs ? "" : "$", *d);
        ok = !ferror(f);
        if (fclose(f) != 0 || !ok)
                return mfree(buf);
        return buf;
}

static void render_kubelet_shares(Out *o, const Params *p) {
        static const char *const dirs[] = { "/var/lib/kubelet", "/var/log/pods" };

        for (size_t i = 0; i < ELEMENTSOF(dirs) && o->r == 0; i++) {
                _cleanup_free_ char *line = NULL;
                int n;

                if (p->spec->shares.kubelet == KUBELET_SHARES_VIRTIO)
                        n = asprintf(&line, "host%zu %s 9p trans=virtio,version=9p2000.L 0 0", i, dirs[i]);
                else /* _netdev (start-vm.sh has none): systemd unmounts it while the network is still up; without
                      * it, a guest with the share mounted cannot power off (the unmount waits on a dead TCP link
                      * until systemd gives up, 90 s later). */
                        n = asprintf(&line,
                                     "%s %s 9p noauto,_netdev,uname=root,aname=%s,access=user,trans=tcp,port=%" PRIu32
                                     " 0 0",
                                     p->gateway, dirs[i], dirs[i], p->diod_port);
                if (n < 0) {
                        line = NULL;
                        o->r = -ENOMEM;
                        return;
                }
                put_fstab_line(o, line);
        }
}

static void render_runcmd(Out *o, const Params *p) {
        const VmSpec *spec = p->spec;
        bool kubelet = spec->shares.kubelet != KUBELET_SHARES_NONE;

        put(o, "runcmd:\n");
        if (spec->software.extra_debs && spec->software.extra_debs[0]) {
                _cleanup_free_ char *debs = join_debs(spec->software.extra_debs);

                if (!debs) {
                        o->r = -ENOMEM;
                        return;
                }
                put_cmd(o, "/usr/bin/install_debs.sh", debs, NULL);
        }
        if (p->nvdimm)
                put_cmd(o, "ndctl", "create-namespace", "--force", "--reconfig=namespace0.0", "--mode", "devdax",
                        "--map", "mem", NULL);
        if (p->proxy) {
                _cleanup_free_ char *url = NULL;

                if (asprintf(&url, "%s%s", p->csi_url, p->debian_arch) < 0) {
                        o->r = -ENOMEM;
                        return;
                }
                put_cmd(o, "wget", url, "-O", "/usr/bin/csi-grpc-proxy", NULL);
                put_cmd(o, "chmod", "a+x", "/usr/bin/csi-grpc-proxy", NULL);
                put_cmd(o, "bash", "-c", "mv /etc/containerd/config.toml.new /etc/containerd/config.toml", NULL);
                put_cmd(o, "bash", "-c",
                        "sed -i -e 's[ExecStartPre=-[ExecStartPre=/usr/bin/wait_for_mounts.sh\\nExecStartPre=-[g' "
                        "/usr/lib/systemd/system/containerd.service",
                        NULL);
        }
        for (size_t t = 0; t < ELEMENTSOF(tool_names); t++) {
                _cleanup_free_ char *from = NULL, *to = NULL;

                if (!p->tools[t])
                        continue;
                if (asprintf(&from, "/usr/bin/%s.new", tool_names[t]) < 0) {
                        from = NULL;
                        o->r = -ENOMEM;
                        return;
                }
                if (asprintf(&to, "/usr/bin/%s", tool_names[t]) < 0) {
                        to = NULL;
                        o->r = -ENOMEM;
                        return;
                }
                put_cmd(o, "mv", from, to, NULL);
        }
        put_cmd(o, "bash", "-c", "cat /etc/issue.hydra >> /etc/issue", NULL);
        if (p->diod) {
                put_cmd(o, "bash", "-c", SH_INSTALL_K3S, "bash", p->k3s_version, NULL);
                if (p->crismux)
                        put_cmd(o, "bash", "-c", SH_INSTALL_CRISMUX, "bash", p->gateway, p->crismux_url,
                                p->crismux_sha256, NULL);
                put_cmd(o, "bash", "-c", "cat /etc/diod.conf.new > /etc/diod.conf", NULL);
                put_cmd(o, "bash", "-c", "sed -i -e 's/DIOD_ENABLE=false/DIOD_ENABLE=true/g' /etc/default/diod", NULL);
                put_cmd(o, "systemctl", "daemon-reload", NULL);
                put_cmd(o, "systemctl", "restart", "diod", NULL);
        }
        if (kubelet || spec->shares.n_extra > 0) {
                put(o, "- [\"mkdir\", \"-p\"");
                if (kubelet)
                        put(o, ", \"/var/lib/kubelet\", \"/var/log/pods\"");
                for (size_t i = 0; i < spec->shares.n_extra; i++) {
                        put(o, ", ");
                        put_str(o, spec->shares.extra[i].guest_path);
                }
                put(o, "]\n");
        }
        if (kubelet)
                render_kubelet_shares(o, p);
        for (size_t i = 0; i < spec->shares.n_extra && o->r == 0; i++) {
                _cleanup_free_ char *line = NULL;
                char tag[32];

                (void) snprintf(tag, sizeof(tag), "host%zu", EXTRA_SHARE_FIRST_TAG + i);
                if (asprintf(&line, "%s %s 9p trans=virtio,version=9p2000.L 0 0", tag,
                             spec->shares.extra[i].guest_path) < 0) {
                        line = NULL;
                        o->r = -ENOMEM;
                        return;
                }
                put_fstab_line(o, line);
                put_cmd(o, "mount", tag, NULL);
        }
        if (p->proxy) {
                put_cmd(o, "systemctl", "enable", "csi-grpc-proxy.service", NULL);
                put_cmd(o, "systemctl", "daemon-reload", NULL);
                put_cmd(o, "systemctl", "restart", "containerd", NULL);
                if (p->sandbox_image_url)
                        put_cmd(o, "bash", "-c", SH_IMPORT_SANDBOX, "bash", p->sandbox_image_url, NULL);
                put_cmd(o, "systemctl", "start", "csi-grpc-proxy.service", NULL);
        }
        if (spec->software.reboot_after_install)
                put_cmd(o, "shutdown", "-r", "0", NULL);
}

static const char *true_false(bool b) {
        return b ? "true" : "false";
}

static void render_user_data(Out *o, const Params *p) {
        put(o, "#cloud-config\n");
        render_users(o, p);
        put(o, "hostname: ");
        put_str(o, p->hostname);
        /* manage_etc_hosts: the hostname resolves (sudo said "unable to resolve host" on every call).
         * package_update/upgrade are spec settings: a device without a mirror cannot run them. */
        put(o, "\n"
               "create_hostname_file: true\n"
               "manage_etc_hosts: true\n"
               "package_reboot_if_required: true\n"
               "package_update: %s\n"
               "package_upgrade: %s\n",
            true_false(p->spec->software.package_update), true_false(p->spec->software.package_upgrade));
        render_packages(o, p);
        render_write_files(o, p);
        render_runcmd(o, p);
}

/* start-vm.sh puts these two keys into network-config, where cloud-init does not look for them. */
static void render_meta_data(Out *o, const Params *p) {
        put(o, "instance-id: ");
        put_str(o, p->hostname);
        put(o, "\nlocal-hostname: ");
        put_str(o, p->hostname);
        put(o, "\n");
}

/* One stanza: the NIC QEMU was given (vm_spec_mac()), renamed to INTERFACE_NAME. The default route is gateway4,
 * not a `routes:` entry: cloud-init's ENI renderer (Debian's ifupdown images) writes a route as `post-up route add
 * default gw ... || true`, and route(8) is net-tools, which such an image need not have (a bookworm guest had no
 * default route: "route: not found"); gateway4 becomes ifupdown's own `gateway` line (iproute2), networkd's
 * Gateway=, and netplan reads it as it is. */
static void render_network_config(Out *o, const Params *p) {
        char address[INET_ADDRSTRLEN + 4];

        (void) snprintf(address, sizeof(address), "%s/%" PRIu32, p->guest_ip, p->prefix_len);
        put(o, "version: 2\n"
               "ethernets:\n"
               "  %s:\n"
               "    match:\n"
               "      macaddress: ",
            INTERFACE_NAME);
        put_str(o, p->mac);
        put(o, "\n    set-name: %s\n"
               "    dhcp4: false\n"
               "    addresses: [",
            INTERFACE_NAME);
        put_str(o, address);
        put(o, "]\n    gateway4: ");
        put_str(o, p->gateway);
        put(o, "\n    nameservers:\n      addresses: [");
        put_str(o, p->dns);
        put(o, "]\n");
}

void cloud_init_files_done(CloudInitFiles *f) {
        if (!f)
                return;
        f->user_data = mfree(f->user_data);
        f->meta_data = mfree(f->meta_data);
        f->network_config = mfree(f->network_config);
        f->vendor_data = mfree(f->vendor_data);
}

int cloud_init_render(const CloudInitInput *in, CloudInitFiles *ret, HydraError *err) {
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        static void (*const renderers[])(Out *o, const Params *p) = {
                render_user_data,
                render_meta_data,
                render_network_config,
        };
        char **texts[] = { &files.user_data, &files.meta_data, &files.network_config };
        Params p;
        int r;

        r = check_input(in, &p, err);
        if (r < 0)
                return r;

        for (size_t i = 0; i < ELEMENTSOF(renderers); i++) {
                Out o;

                if (out_open(&o) < 0)
                        return hydra_error_set(err, -ENOMEM, "cloud-init: out of memory");
                renderers[i](&o, &p);
                r = out_finish(&o, texts[i]);
                if (r < 0)
                        return hydra_error_set(err, r, "cloud-init: out of memory");
        }
        /* start-vm.sh writes an empty vendor-data. */
        files.vendor_data = strdup("");
        if (!files.vendor_data)
                return hydra_error_set(err, -ENOMEM, "cloud-init: out of memory");

        *ret = files;
        files = (CloudInitFiles) {};
        return 0;
}
