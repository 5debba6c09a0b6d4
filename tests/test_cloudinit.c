/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <ctype.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cloudinit.h"
#include "qemu_argv.h"

/* Golden files, as tests/test_qemu_argv.c: tests/data/cloudinit/CASE/{user-data,meta-data,network-config,
 * vendor-data} hold the expected seed. HYDRA_UPDATE_GOLDEN=1 (or HYDRA_REGENERATE_GOLDEN=1, as for the argv
 * goldens) rewrites them from the renderer's output (review the diff before committing); otherwise the test
 * compares. Every rendered seed is also read back by the guest's own tools: Debian's `cloud-init schema` for
 * user-data, PyYAML (what cloud-init parses with) for every file, checking that values come back verbatim. */

#define CLOUD_INIT "/usr/bin/cloud-init"
#define PYTHON "/usr/bin/python3"

extern char **environ;

static const char *const file_names[] = { "user-data", "meta-data", "network-config", "vendor-data" };

static char **file_texts(CloudInitFiles *f, size_t i) {
        char **t[] = { &f->user_data, &f->meta_data, &f->network_config, &f->vendor_data };
        return t[i];
}

/* openssl passwd -6 -salt 123456 hailhydra: start-vm.sh's default password and salt. */
#define HASH_HAILHYDRA \
        "$6$123456$q6XGyjamEiUjdWApOVBUHMcN5KpCBYXZJDS67smcWYWKkXukbxVLozbARz3hJeQtOlaDd/Th9OULM5Oe9UUZK."

static char *isolated_keys[] = {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB1ie7vGZ8Kd2nNq5j0tHydraIsolatedTestKey000 ops@example.org",
        NULL,
};

static char *full_keys[] = {
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHydraFullTestKeyOne000000000000000000000 alice@example.org",
        "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBHydraTwo= bob@example.org",
        NULL,
};

static char *full_debs[] = {
        "https://deb.example.org/pool/main/h/hello/hello_2.10-3_amd64.deb",
        "http://mirror.example.org/extra/tool_1.0+git20250101-1_amd64.deb?token=abc&x=1",
        NULL,
};

static Share full_shares[] = {
        { .host_path = "/srv/data", .guest_path = "/mnt/data" },
        { .host_path = "/srv/models", .guest_path = "/opt/models_v2.1" },
};

/* Not real tools: bytes that exercise base64 (NUL, 0xff, a length that is not a multiple of 3, more than one
 * line). */
static const unsigned char tool_ctr_enc[] = "\x7f" "ELF\x02\x01\x01" "ctr-enc test payload \x00\xff\xfe\x80 "
                                            "with enough bytes to need a second line of base64 output, 1234567890";
static const unsigned char tool_ctd_decoder[] = "\x7f" "ELF ctd-decoder";
static const unsigned char tool_keyprovider[] = { 0x00, 0x01, 0x02, 0xfd, 0xfe, 0xff, 0x3e, 0x3f };

static const CloudInitBlob tools_all[] = {
        /* Given out of order: the seed lists them in start-vm.sh's order. */
        { .name = "rimd-keyprovider-proxy", .data = tool_keyprovider, .size = sizeof(tool_keyprovider) },
        { .name = "ctr-enc", .data = tool_ctr_enc, .size = sizeof(tool_ctr_enc) - 1 },
        { .name = "ctd-decoder", .data = tool_ctd_decoder, .size = sizeof(tool_ctd_decoder) - 1 },
};

#define CRISMUX_INSTALLER                                              \
        "#!/bin/sh\n"                                                  \
        "# test stand-in for add-crismux/install_crismux.sh\n"         \
        "echo \"crismux $1 via ${NELLY_HOSTNAME}\"\n"
#define CRISMUX_SHA256 "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"

typedef struct GoldenCase {
        const char *name;
        VmSpec spec;
        const char *debian_arch;
        const CloudInitBlob *tools;
        size_t n_tools;
        const char *crismux;
        const char *packages;      /* expected, space-separated */
} GoldenCase;

static const GoldenCase golden_cases[] = {
        {
                /* The isolated VM: containerd + TCP proxy, kubelet directories mounted over 9p/TCP from the host's
                 * diod. */
                .name = "isolated",
                .spec = { .arch = ARCH_X86_64,
                          .guest = { .username = "hailhydra", .password_hash = HASH_HAILHYDRA,
                                     .hostname = "hydra-isolated", .ssh_authorized_keys = isolated_keys },
                          .software = { .csi_grpc_proxy_url = SPEC_DEFAULT_CSI_GRPC_PROXY_URL,
                                        .k3s_version = SPEC_DEFAULT_K3S_VERSION,
                                        .package_update = true, .package_upgrade = true,
                                        .sandbox_image = "registry.example.org/pause:3.9",
                                        .sandbox_image_url = "http://10.0.2.2:8080/pause.oci.tar" },
                          .network = { .guest_ip = "10.0.2.15", .gateway = "10.0.2.2", .dns = "10.0.2.3",
                                       .prefix_len = 24 },
                          .shares = { .kubelet = KUBELET_SHARES_TCP, .diod_port = 30564 } },
                .debian_arch = "amd64",
                .packages = "containerd imgcrypt 9mount wget",
        },
        {
                /* The host VM: k3s + diod + crismux, no containerd proxy, no kubelet shares. */
                .name = "host",
                .spec = { .arch = ARCH_AARCH64,
                          .guest = { .username = "hailhydra", .password_hash = HASH_HAILHYDRA,
                                     .hostname = "hydra-host" },
                          .software = { .disable_containerd_proxy = true, .k3s_diod = true,
                                        .k3s_version = "v1.33.1+k3s1", .package_update = true,
                                        .crismux_url = "http://10.0.2.2:8080/crismux-v1.2.2-linux-arm64.tar.gz",
                                        .crismux_sha256 = CRISMUX_SHA256 },
                          .network = { .guest_ip = "10.0.2.15", .gateway = "10.0.2.2", .dns = "10.0.2.3",
                                       .prefix_len = 24 },
                          .shares = { .kubelet = KUBELET_SHARES_NONE, .diod_port = 30564 } },
                .crismux = CRISMUX_INSTALLER,
                .packages = "diod wget",
        },
        {
                /* Extra shares and .debs, a kernel package, a reboot, nvdimm, virtio kubelet shares, another
                 * network and MAC (upper case in the spec, lower case in the seed), no password (locked), two keys,
                 * arm64 from the spec's arch, an upgrade without an update. */
                .name = "full",
                .spec = { .arch = ARCH_AARCH64,
                          .guest = { .username = "edge", .hostname = "edge-01.lab.example.org",
                                     .ssh_authorized_keys = full_keys },
                          .software = { .kernel_package = "linux-image-6.12.38+deb13-cloud-arm64",
                                        .extra_debs = full_debs, .reboot_after_install = true,
                                        .package_upgrade = true },
                          .network = { .guest_ip = "192.168.7.20", .gateway = "192.168.7.17", .dns = "192.168.7.53",
                                       .prefix_len = 28, .mac = "52:54:00:AB:CD:EF" },
                          .shares = { .kubelet = KUBELET_SHARES_VIRTIO, .extra = full_shares,
                                      .n_extra = ELEMENTSOF(full_shares) },
                          .devices = { .shmem = SHMEM_NVDIMM, .shmem_size_gib = 1 } },
                .packages = "ndctl containerd imgcrypt 9mount linux-image-6.12.38+deb13-cloud-arm64 wget",
        },
        {
                /* The encrypted-image tools from the artifact, embedded as base64. */
                .name = "encrypted-tools",
                .spec = { .arch = ARCH_X86_64,
                          .bare = { .encrypted_tools = true },
                          .software = { .package_update = true, .package_upgrade = true },
                          .guest = { .password_hash = HASH_HAILHYDRA, .hostname = "hydra-isolated",
                                     .ssh_authorized_keys = isolated_keys },
                          .shares = { .kubelet = KUBELET_SHARES_TCP } },
                .debian_arch = "amd64",
                .tools = tools_all,
                .n_tools = ELEMENTSOF(tools_all),
                .packages = "containerd imgcrypt 9mount wget",
        },
        {
                /* Nothing set: every NULL string, 0 number is taken as start-vm.sh's default; false booleans
                 * (no apt-get update or upgrade) are the spec's. */
                .name = "defaults",
                .spec = { .arch = ARCH_X86_64 },
                .packages = "containerd imgcrypt 9mount wget",
        },
        {
                /* Only install_debs.sh runs wget: the one package. */
                .name = "debs-only",
                .spec = { .arch = ARCH_X86_64,
                          .software = { .disable_containerd_proxy = true, .extra_debs = full_debs },
                          .shares = { .kubelet = KUBELET_SHARES_NONE } },
                .packages = "wget",
        },
};

/* --- helpers --- */

static char *read_file(const char *path) {
        FILE *f = fopen(path, "re");
        char *buf = NULL;
        size_t size = 0;

        if (!f)
                return NULL;
        FILE *out = open_memstream(&buf, &size);
        ck_assert_ptr_nonnull(out);
        for (int c; (c = fgetc(f)) != EOF;)
                fputc(c, out);
        fclose(out);
        fclose(f);
        return buf;
}

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        ck_assert_msg(f, "cannot write %s", path);
        fputs(text, f);
        ck_assert_int_eq(fclose(f), 0);
}

/* Runs argv (argv[0] a full path) with stdout and stderr into *ret_output. Returns the exit status, or -1. */
static int run(char *const argv[], char **ret_output) {
        posix_spawn_file_actions_t fa;
        char *buf = NULL;
        size_t size = 0;
        FILE *out;
        int fds[2], status, r;
        pid_t pid;
        char chunk[4096];
        ssize_t n;

        ck_assert_int_eq(pipe2(fds, O_CLOEXEC), 0);
        ck_assert_int_eq(posix_spawn_file_actions_init(&fa), 0);
        ck_assert_int_eq(posix_spawn_file_actions_adddup2(&fa, fds[1], STDOUT_FILENO), 0);
        ck_assert_int_eq(posix_spawn_file_actions_adddup2(&fa, fds[1], STDERR_FILENO), 0);
        r = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        close(fds[1]);
        ck_assert_msg(r == 0, "cannot run %s: %s", argv[0], strerror(r));

        out = open_memstream(&buf, &size);
        ck_assert_ptr_nonnull(out);
        while ((n = read(fds[0], chunk, sizeof(chunk))) > 0)
                fwrite(chunk, 1, (size_t) n, out);
        fclose(out);
        close(fds[0]);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        *ret_output = buf;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

typedef struct Seed {
        char dir[64];
        char paths[ELEMENTSOF(file_names)][128];
} Seed;

static void seed_write(Seed *s, CloudInitFiles *f) {
        const char *tmp = getenv("TMPDIR");

        snprintf(s->dir, sizeof(s->dir), "%s/test_cloudinit.XXXXXX", isempty(tmp) || strlen(tmp) > 30 ? "/tmp" : tmp);
        ck_assert_ptr_nonnull(mkdtemp(s->dir));
        for (size_t i = 0; i < ELEMENTSOF(file_names); i++) {
                snprintf(s->paths[i], sizeof(s->paths[i]), "%s/%s", s->dir, file_names[i]);
                write_file(s->paths[i], *file_texts(f, i));
        }
}

static void seed_remove(Seed *s) {
        for (size_t i = 0; i < ELEMENTSOF(file_names); i++)
                (void) unlink(s->paths[i]);
        (void) rmdir(s->dir);
}

/* Debian's cloud-init validates user-data against its schema. A missing cloud-init fails the test: it is a
 * build dependency (packaging/install-deps.sh). */
static void assert_schema_valid(const char *name, const char *path) {
        char *argv[] = { CLOUD_INIT, "schema", "--config-file", (char *) path, NULL };
        _cleanup_free_ char *output = NULL;
        int status;

        ck_assert_msg(access(CLOUD_INIT, X_OK) == 0, "%s is missing: install cloud-init "
                      "(packaging/install-deps.sh)", CLOUD_INIT);
        status = run(argv, &output);
        ck_assert_msg(status == 0 && strstr(output, "Valid cloud-config"),
                      "%s: cloud-init schema refused user-data (exit %d):\n%s", name, status, output);
}

/* Loads the four files with PyYAML's safe loader, as cloud-init does, and checks the structure and that every
 * value from the spec came back exactly as given (argv[2] holds the expected values as JSON). */
static const char python_check[] =
        "import json, re, sys, tempfile, yaml\n"
        "d, want = sys.argv[1], json.loads(sys.argv[2])\n"
        "def load(name):\n"
        "    with open(d + '/' + name, encoding='utf-8') as f:\n"
        "        text = f.read()\n"
        "    return text, yaml.safe_load(text)\n"
        "text, ud = load('user-data')\n"
        "assert text.startswith('#cloud-config\\n'), 'no #cloud-config header'\n"
        "top = {'users', 'hostname', 'create_hostname_file', 'manage_etc_hosts', 'package_reboot_if_required',\n"
        "       'package_update', 'package_upgrade', 'packages', 'write_files', 'runcmd'}\n"
        "assert isinstance(ud, dict) and set(ud) <= top, 'unexpected top-level keys: %r' % (set(ud) - top)\n"
        "assert ud['users'][0] == 'default' and len(ud['users']) == 2, ud['users']\n"
        "u = ud['users'][1]\n"
        "assert u['name'] == want['username'], (u['name'], want['username'])\n"
        "assert u['primary_group'] == want['username'], u['primary_group']\n"
        "assert u['groups'] == 'users, admin' and u['sudo'] == 'ALL=(ALL) NOPASSWD:ALL', u\n"
        "if want['passwd'] is None:\n"
        "    assert u['lock_passwd'] is True and 'passwd' not in u, u\n"
        "else:\n"
        "    assert u['lock_passwd'] is False and u['passwd'] == want['passwd'], u\n"
        "assert u.get('ssh_authorized_keys', []) == want['keys'], (u.get('ssh_authorized_keys'), want['keys'])\n"
        "assert set(u) <= {'name', 'primary_group', 'groups', 'sudo', 'lock_passwd', 'passwd',\n"
        "                  'ssh_authorized_keys'}, u\n"
        "assert ud['hostname'] == want['hostname'], ud['hostname']\n"
        "for k in ('create_hostname_file', 'manage_etc_hosts', 'package_reboot_if_required'):\n"
        "    assert ud.get(k) is True, k\n"
        "for k in ('package_update', 'package_upgrade'):\n"
        "    assert ud[k] is want[k], (k, ud[k], want[k])\n"
        "assert ud.get('packages', []) == want['packages'], (ud.get('packages'), want['packages'])\n"
        "for w in ud['write_files']:\n"
        "    assert set(w) <= {'path', 'content', 'owner', 'permissions', 'encoding'}, w\n"
        "    assert all(isinstance(v, str) for v in w.values()), w\n"
        "for c in ud['runcmd']:\n"
        "    assert isinstance(c, list) and all(isinstance(a, str) for a in c), c\n"
        "    for a in c:\n"
        "        assert not re.search(r'\\bsed\\s+-i\\S', a), 'sed -iSUFFIX leaves a backup file: %r' % a\n"
        "runs_wget = any(c[0] == '/usr/bin/install_debs.sh' or any(re.search(r'\\bwget\\b', a) for a in c)\n"
        "                for c in ud['runcmd'])\n"
        "assert ('wget' in ud.get('packages', [])) == runs_wget, ('wget', runs_wget, ud.get('packages'))\n"
        "assert ('ndctl' in json.dumps(ud)) == want['ndctl'], 'ndctl'\n"
        "_, md = load('meta-data')\n"
        "assert md == {'instance-id': want['hostname'], 'local-hostname': want['hostname']}, md\n"
        "_, nc = load('network-config')\n"
        "assert set(nc) == {'version', 'ethernets'} and nc['version'] == 2, nc\n"
        "assert list(nc['ethernets']) == ['eth0'], nc\n"
        "assert nc['ethernets']['eth0'] == {'match': {'macaddress': want['mac']}, 'set-name': 'eth0',\n"
        "                                   'dhcp4': False, 'addresses': [want['address']],\n"
        "                                   'gateway4': want['gateway'],\n"
        "                                   'nameservers': {'addresses': [want['dns']]}}, nc\n"
        "# What the guest makes of it: cloud-init's own ENI renderer (Debian's ifupdown images), as in the guest.\n"
        "from cloudinit.net import eni, network_state\n"
        "with tempfile.TemporaryDirectory() as t:\n"
        "    eni.Renderer().render_network_state(network_state.parse_net_config_data(nc), target=t)\n"
        "    ifaces = open(t + '/etc/network/interfaces', encoding='utf-8').read()\n"
        "    rules = open(t + '/etc/udev/rules.d/70-persistent-net.rules', encoding='utf-8').read()\n"
        "assert re.findall(r'^iface (\\S+)', ifaces, re.M) == ['lo', 'eth0'], ifaces\n"
        "assert 'auto eth0\\niface eth0 inet static\\n    address %s\\n' % want['address'] in ifaces, ifaces\n"
        "assert '\\n    gateway %s\\n' % want['gateway'] in ifaces, ifaces\n"
        "assert not re.search(r'\\broute\\s', ifaces), 'route(8) is net-tools, not on every image:\\n' + ifaces\n"
        "rule = 'ATTR{address}==\"%s\", NAME=\"eth0\"\\n' % want['mac']\n"
        "assert rules.startswith('SUBSYSTEM==\"net\", ACTION==\"add\"'), rules\n"
        "assert rules.count('NAME=') == 1 and rule in rules, rules\n"
        "text, vd = load('vendor-data')\n"
        "assert text == '' and vd is None, text\n"
        "print('ok')\n";

static json_t *strv_to_json(char **l) {
        json_t *a = json_array();

        for (char **i = l; i && *i; i++)
                ck_assert_int_eq(json_array_append_new(a, json_string(*i)), 0);
        return a;
}

static json_t *words_to_json(const char *words) {
        json_t *a = json_array();

        for (const char *w = words; w && *w;) {
                size_t n = strcspn(w, " ");

                ck_assert_int_eq(json_array_append_new(a, json_stringn(w, n)), 0);
                w += n + (w[n] == ' ');
        }
        return a;
}

static const char *or_default(const char *s, const char *def) {
        return isempty(s) ? def : s;
}

static void assert_parses_back(const char *name, const Seed *s, const VmSpec *spec, const char *packages) {
        json_auto_t *want = json_object();
        _cleanup_free_ char *want_text = NULL, *output = NULL, *address = NULL, *mac = NULL;
        int status;

        ck_assert_int_ge(asprintf(&address, "%s/%u", or_default(spec->network.guest_ip, SPEC_DEFAULT_GUEST_IP),
                                  spec->network.prefix_len ? spec->network.prefix_len : SPEC_DEFAULT_PREFIX_LEN),
                         0);
        json_object_set_new(want, "username", json_string(or_default(spec->guest.username, SPEC_DEFAULT_USERNAME)));
        json_object_set_new(want, "passwd",
                            isempty(spec->guest.password_hash) ? json_null() : json_string(spec->guest.password_hash));
        json_object_set_new(want, "keys", strv_to_json(spec->guest.ssh_authorized_keys));
        json_object_set_new(want, "hostname", json_string(or_default(spec->guest.hostname, SPEC_DEFAULT_HOSTNAME)));
        json_object_set_new(want, "packages", words_to_json(packages));
        json_object_set_new(want, "ndctl", json_boolean(spec->devices.shmem == SHMEM_NVDIMM));
        json_object_set_new(want, "address", json_string(address));
        json_object_set_new(want, "dns", json_string(or_default(spec->network.dns, SPEC_DEFAULT_DNS)));
        json_object_set_new(want, "gateway", json_string(or_default(spec->network.gateway, SPEC_DEFAULT_GATEWAY)));
        /* The image's NIC (no case here boots a bare kernel), spelt as the guest's kernel spells it. */
        mac = strdup(or_default(spec->network.mac, SPEC_DEFAULT_MAC_IMAGE));
        ck_assert_ptr_nonnull(mac);
        for (char *c = mac; *c; c++)
                *c = (char) tolower((unsigned char) *c);
        json_object_set_new(want, "mac", json_string(mac));
        json_object_set_new(want, "package_update", json_boolean(spec->software.package_update));
        json_object_set_new(want, "package_upgrade", json_boolean(spec->software.package_upgrade));
        want_text = json_dumps(want, JSON_COMPACT);
        ck_assert_ptr_nonnull(want_text);

        char *argv[] = { PYTHON, "-c", (char *) python_check, (char *) s->dir, want_text, NULL };
        ck_assert_msg(access(PYTHON, X_OK) == 0, "%s is missing", PYTHON);
        status = run(argv, &output);
        ck_assert_msg(status == 0 && streq(output, "ok\n"),
                      "%s: the seed does not read back as rendered (exit %d):\n%s", name, status, output);
}

/* The first line where two texts differ, for a readable failure. */
static void assert_same_text(const char *name, const char *file, const char *want, const char *got) {
        unsigned line = 1;
        const char *w = want, *g = got;

        if (streq(want, got))
                return;
        while (*w && *w == *g) {
                if (*w == '\n')
                        line++;
                w++, g++;
        }
        while (w > want && w[-1] != '\n')
                w--, g--;
        ck_abort_msg("%s/%s differs at line %u:\n  want: %.*s\n  got:  %.*s\n(HYDRA_UPDATE_GOLDEN=1 rewrites the "
                     "golden files)",
                     name, file, line, (int) strcspn(w, "\n"), w, (int) strcspn(g, "\n"), g);
}

static bool update_golden(void) {
        const char *a = getenv("HYDRA_UPDATE_GOLDEN"), *b = getenv("HYDRA_REGENERATE_GOLDEN");

        return (a && streq(a, "1")) || (b && streq(b, "1"));
}

static CloudInitInput case_input(const GoldenCase *c) {
        return (CloudInitInput) { .spec = &c->spec, .debian_arch = c->debian_arch, .tools = c->tools,
                                  .n_tools = c->n_tools, .crismux_installer = c->crismux };
}

static void render_ok(const CloudInitInput *in, CloudInitFiles *ret) {
        HydraError e = {};
        int r = cloud_init_render(in, ret, &e);

        ck_assert_msg(r == 0, "render failed (%d): %s", r, e.message);
        ck_assert_ptr_nonnull(ret->user_data);
        ck_assert_ptr_nonnull(ret->meta_data);
        ck_assert_ptr_nonnull(ret->network_config);
        ck_assert_ptr_nonnull(ret->vendor_data);
}

/* The checks every rendered seed gets: cloud-init's schema, PyYAML reading back the values, no "\/". */
static void assert_seed_sound(const char *name, CloudInitFiles *f, const VmSpec *spec, const char *packages) {
        Seed s = {};

        for (size_t i = 0; i < ELEMENTSOF(file_names); i++)
                ck_assert_msg(!strstr(*file_texts(f, i), "\\/"), "%s/%s has an escaped '/'", name, file_names[i]);
        seed_write(&s, f);
        assert_schema_valid(name, s.paths[0]);
        assert_parses_back(name, &s, spec, packages);
        seed_remove(&s);
}

/* --- tests --- */

START_TEST(test_golden) {
        const GoldenCase *c = &golden_cases[_i];
        CloudInitInput in = case_input(c);
        _cleanup_(cloud_init_files_done) CloudInitFiles f = {};

        render_ok(&in, &f);
        for (size_t i = 0; i < ELEMENTSOF(file_names); i++) {
                _cleanup_free_ char *dir = NULL, *path = NULL, *want = NULL;
                const char *got = *file_texts(&f, i);

                ck_assert_int_ge(asprintf(&dir, "%s/cloudinit/%s", TEST_DATA_DIR, c->name), 0);
                ck_assert_int_ge(asprintf(&path, "%s/%s", dir, file_names[i]), 0);
                if (update_golden()) {
                        (void) mkdir(dir, 0755);
                        write_file(path, got);
                        fprintf(stderr, "updated %s\n", path);
                        continue;
                }
                want = read_file(path);
                ck_assert_msg(want, "cannot read %s (HYDRA_UPDATE_GOLDEN=1 creates it)", path);
                assert_same_text(c->name, file_names[i], want, got);
        }
        assert_seed_sound(c->name, &f, &c->spec, c->packages);
}
END_TEST

START_TEST(test_deterministic) {
        const GoldenCase *c = &golden_cases[2];
        CloudInitInput in = case_input(c);
        _cleanup_(cloud_init_files_done) CloudInitFiles a = {}, b = {};

        render_ok(&in, &a);
        render_ok(&in, &b);
        for (size_t i = 0; i < ELEMENTSOF(file_names); i++)
                ck_assert_str_eq(*file_texts(&a, i), *file_texts(&b, i));
}
END_TEST

/* Supervision is not guest configuration: the seed (whose digest decides a disk reset) is the same whatever the
 * restart policy, probe or readiness limit say, so changing them never resets the disk. */
START_TEST(test_supervision_not_in_seed) {
        const GoldenCase *c = &golden_cases[2];
        CloudInitInput in = case_input(c);
        _cleanup_(cloud_init_files_done) CloudInitFiles a = {}, b = {};
        VmSpec spec = c->spec;

        render_ok(&in, &a);
        spec.supervision.ready_timeout_sec = 300;
        spec.supervision.restart = RESTART_ON_FAILURE;
        spec.supervision.max_restarts = 3;
        spec.supervision.stop_timeout_sec = 90;
        spec.supervision.autostart = !c->spec.supervision.autostart;
        in.spec = &spec;
        render_ok(&in, &b);
        for (size_t i = 0; i < ELEMENTSOF(file_names); i++)
                ck_assert_str_eq(*file_texts(&a, i), *file_texts(&b, i));
}
END_TEST

/* Values built to break out of a YAML scalar: quotes, flow syntax, comments, anchors, tags, backslashes,
 * characters YAML reads as line breaks or refuses raw, and non-ASCII (control characters, a raw newline among
 * them, are refused by the field rules: test_refused). They must come back from PyYAML as exactly these
 * strings, and the structure must not change. */
static char *evil_keys[] = {
        "ssh-ed25519 AAAA \"quoted\" ]: { evil: 1 } # not a comment",
        "ssh-rsa AAAA 'single' ], [x], &anchor *alias !!python/object/apply:os.system ['id'] ключ 🔑",
        "sk-ssh-ed25519@openssh.com AAAA ${HOME} $(reboot) `id` \\n \\\" \\ / \xc2\x85 "
        "\xe2\x80\xa8 \xe2\x80\xa9 \xef\xbb\xbf \xef\xbf\xbe \xc2\x9f end",
        NULL,
};

START_TEST(test_injection_lands_as_strings) {
        VmSpec spec = {
                .arch = ARCH_X86_64,
                /* The user name has its own strict rule (field_check_username): the keys carry the attack. */
                .guest = { .username = "hailhydra",
                           .password_hash = "$6$salt$abc/def.ghi",
                           .hostname = "hydra-isolated",
                           .ssh_authorized_keys = evil_keys },
                .shares = { .kubelet = KUBELET_SHARES_VIRTIO },
        };
        CloudInitInput in = { .spec = &spec };
        _cleanup_(cloud_init_files_done) CloudInitFiles f = {};

        render_ok(&in, &f);
        /* Written escaped, never raw: YAML would fold U+2028/U+0085. */
        ck_assert_ptr_null(strstr(f.user_data, "\xe2\x80\xa8"));
        ck_assert_ptr_null(strstr(f.user_data, "\xc2\x85"));
        ck_assert_ptr_nonnull(strstr(f.user_data, "\\u2028"));
        ck_assert_ptr_nonnull(strstr(f.user_data, "\\u0085"));
        ck_assert_ptr_nonnull(strstr(f.user_data, "🔑")); /* other non-ASCII stays UTF-8 */
        assert_seed_sound("injection", &f, &spec, "containerd imgcrypt 9mount wget");
}
END_TEST

/* start-vm.sh's `[ ${SHMEM_TYPE}=="nvdimm" ]` is always true; here ndctl comes only with nvdimm. */
START_TEST(test_ndctl_only_for_nvdimm) {
        static const Shmem kinds[] = { SHMEM_NONE, SHMEM_NVDIMM, SHMEM_IVSHMEM };

        for (size_t i = 0; i < ELEMENTSOF(kinds); i++) {
                VmSpec spec = { .arch = ARCH_X86_64, .devices = { .shmem = kinds[i] } };
                CloudInitInput in = { .spec = &spec };
                _cleanup_(cloud_init_files_done) CloudInitFiles f = {};
                bool nvdimm = kinds[i] == SHMEM_NVDIMM;

                render_ok(&in, &f);
                ck_assert_int_eq(!!strstr(f.user_data, "ndctl"), nvdimm);
                ck_assert_int_eq(!!strstr(f.user_data, "\n- ndctl\n"), nvdimm);
                ck_assert_int_eq(!!strstr(f.user_data, "\"create-namespace\""), nvdimm);
        }
}
END_TEST

/* A kubelet share over TCP is a network file system to systemd (_netdev): unmounted before the network goes down at
 * power-off (a real guest without it hung in the unmount until the stop timeout). Over virtio it is not. */
START_TEST(test_tcp_shares_netdev) {
        static const KubeletShares kinds[] = { KUBELET_SHARES_TCP, KUBELET_SHARES_VIRTIO };

        for (size_t i = 0; i < ELEMENTSOF(kinds); i++) {
                VmSpec spec = { .arch = ARCH_X86_64, .shares = { .kubelet = kinds[i] } };
                CloudInitInput in = { .spec = &spec };
                _cleanup_(cloud_init_files_done) CloudInitFiles f = {};
                bool tcp = kinds[i] == KUBELET_SHARES_TCP;

                render_ok(&in, &f);
                ck_assert_int_eq(!!strstr(f.user_data, "/var/lib/kubelet 9p noauto,_netdev,"), tcp);
                ck_assert_int_eq(!!strstr(f.user_data, "/var/log/pods 9p noauto,_netdev,"), tcp);
                ck_assert_ptr_null(strstr(f.user_data, "virtio,version=9p2000.L,_netdev"));
        }
}
END_TEST

/* Without the installer's contents, neither the file nor the command that runs it, nor the RuntimeClass. */
START_TEST(test_crismux_optional) {
        VmSpec spec = { .arch = ARCH_X86_64, .software = { .k3s_diod = true } };
        CloudInitInput in = { .spec = &spec };
        _cleanup_(cloud_init_files_done) CloudInitFiles without = {}, with = {};

        render_ok(&in, &without);
        ck_assert_ptr_null(strstr(without.user_data, "crismux"));
        ck_assert_ptr_nonnull(strstr(without.user_data, "INSTALL_K3S_VERSION"));
        ck_assert_ptr_nonnull(strstr(without.user_data, "/etc/diod.conf.new"));

        in.crismux_installer = CRISMUX_INSTALLER;
        render_ok(&in, &with);
        ck_assert_ptr_nonnull(strstr(with.user_data, "- path: /usr/bin/install_crismux.sh\n"));
        ck_assert_ptr_nonnull(strstr(with.user_data, "/usr/bin/install_crismux.sh install"));
        /* The installer's own defaults: an empty URL and checksum. */
        ck_assert_ptr_nonnull(strstr(with.user_data, "install_crismux.sh install\", \"bash\", \"10.0.2.2\", \"\", \"\"]"));
        ck_assert_ptr_nonnull(strstr(with.user_data,
                                     "- path: /var/lib/rancher/k3s/server/manifests/hydra-nelly-runtimeclass.yaml\n"
                                     "  content: |\n"
                                     "    apiVersion: node.k8s.io/v1\n"
                                     "    kind: RuntimeClass\n"
                                     "    metadata:\n"
                                     "      name: nelly\n"
                                     "    handler: nelly\n"));
        ck_assert_ptr_null(strstr(without.user_data, "RuntimeClass"));
}
END_TEST

/* containerd's sandbox image: the default written out, a spec's own, and its archive imported only when given. */
START_TEST(test_sandbox_image) {
        VmSpec spec = { .arch = ARCH_X86_64 };
        CloudInitInput in = { .spec = &spec };
        _cleanup_(cloud_init_files_done) CloudInitFiles plain = {}, own = {};

        render_ok(&in, &plain);
        ck_assert_ptr_nonnull(strstr(plain.user_data, "    [plugins.\"io.containerd.grpc.v1.cri\"]\n"
                                                      "            sandbox_image = \"registry.k8s.io/pause:3.6\"\n"));
        ck_assert_ptr_null(strstr(plain.user_data, "images import"));

        spec.software.sandbox_image = "registry.example.org/pause:3.9";
        spec.software.sandbox_image_url = "http://10.0.2.2:8080/pause.tar";
        render_ok(&in, &own);
        ck_assert_ptr_nonnull(strstr(own.user_data, "sandbox_image = \"registry.example.org/pause:3.9\"\n"));
        /* After containerd's restart (ctr needs it), before the proxy opens it to the host (readiness). */
        ck_assert_ptr_nonnull(strstr(own.user_data, "- [\"systemctl\", \"restart\", \"containerd\"]\n"
                                                    "- [\"bash\", \"-c\", \"wget -q -O"));
        ck_assert_ptr_nonnull(strstr(own.user_data, "ctr -n k8s.io images import"));
        ck_assert_ptr_nonnull(strstr(own.user_data, "\"bash\", \"http://10.0.2.2:8080/pause.tar\"]\n"
                                                    "- [\"systemctl\", \"start\", \"csi-grpc-proxy.service\"]"));
}
END_TEST

/* The value after "key" in text, up to the end of its line (a new string). */
static char *value_after(const char *text, const char *key) {
        const char *v = strstr(text, key);

        ck_assert_msg(v, "no '%s' in:\n%s", key, text);
        v += strlen(key);
        return strndup(v, strcspn(v, ",\n"));
}

/* The seed matches the NIC by the very address QEMU gives it: the spec's (any case), else the image default. */
START_TEST(test_nic_mac_matches_qemu) {
        static const char *const macs[] = { NULL, "52:54:00:AB:CD:EF", "02:00:00:00:00:01" };

        for (size_t i = 0; i < ELEMENTSOF(macs); i++) {
                VmSpec spec = { .cpus = 1, .memory_mib = 256, .arch = ARCH_X86_64,
                                .image = { .url = "https://example.org/debian-12-generic-amd64.qcow2" },
                                .network = { .mac = (char *) macs[i] } };
                QemuRuntime rt = { .binary = "qemu-system-x86_64", .name = "isolated", .accel = ACCEL_TCG,
                                   .qmp_fd = -1, .qmp_path = "/run/hydra/isolated/qmp.sock",
                                   .console_socket = "/run/hydra/isolated/console.sock",
                                   .disk_path = "/var/lib/hydra/isolated/disk.qcow2", .disk_format = "qcow2",
                                   .seed_path = "/var/lib/hydra/isolated/seed.iso" };
                CloudInitInput in = { .spec = &spec };
                _cleanup_(cloud_init_files_done) CloudInitFiles f = {};
                _cleanup_free_ char *joined = NULL, *qemu_mac = NULL, *seed_mac = NULL;
                char **argv = NULL;
                HydraError e = {};
                size_t size = 0;
                FILE *j = open_memstream(&joined, &size);

                ck_assert_msg(qemu_argv_build(&spec, &rt, &argv, &e) == 0, "%s", e.message);
                for (char **a = argv; *a; a++)
                        fprintf(j, "%s\n", *a);
                fclose(j);
                strv_free(argv);
                render_ok(&in, &f);

                qemu_mac = value_after(joined, "virtio-net-pci,netdev=net0,mac=");
                seed_mac = value_after(f.network_config, "macaddress: ");
                ck_assert_msg(strlen(seed_mac) == 19 && seed_mac[0] == '"' &&
                              strncasecmp(seed_mac + 1, qemu_mac, 17) == 0,
                              "QEMU's NIC has %s, the seed matches %s", qemu_mac, seed_mac);
                /* Lower case: udev compares ATTR{address} (the kernel's lower-case spelling) byte by byte. */
                for (const char *c = seed_mac; *c; c++)
                        ck_assert_msg(!isupper((unsigned char) *c), "upper case in %s", seed_mac);
                ck_assert_str_eq(qemu_mac, macs[i] ? macs[i] : SPEC_DEFAULT_MAC_IMAGE);
        }
}
END_TEST

/* Fields of features that are off are not looked at (nor rendered). */
START_TEST(test_unused_fields_ignored) {
        VmSpec spec = { .arch = ARCH_X86_64,
                        .software = { .disable_containerd_proxy = true, .csi_grpc_proxy_url = "not a url",
                                      .k3s_version = "$(reboot)" } };
        CloudInitInput in = { .spec = &spec, .debian_arch = "no;arch" };
        _cleanup_(cloud_init_files_done) CloudInitFiles f = {};

        render_ok(&in, &f);
        ck_assert_ptr_null(strstr(f.user_data, "$(reboot)"));
        ck_assert_ptr_null(strstr(f.user_data, "not a url"));
        ck_assert_ptr_null(strstr(f.user_data, "csi-grpc-proxy.service"));
        ck_assert_ptr_null(strstr(f.user_data, "packages:"));
}
END_TEST

START_TEST(test_no_input) {
        VmSpec spec = { .arch = ARCH_X86_64 };
        CloudInitInput in = { .spec = NULL };
        CloudInitFiles f = {};
        HydraError e = {};

        ck_assert_int_eq(cloud_init_render(NULL, &f, &e), -EINVAL);
        ck_assert_int_eq(cloud_init_render(&in, &f, &e), -EINVAL);
        ck_assert_ptr_null(f.user_data);
        in.spec = &spec;
        ck_assert_int_eq(cloud_init_render(&in, &f, NULL), 0);
        cloud_init_files_done(&f);
        ck_assert_ptr_null(f.user_data);
        cloud_init_files_done(NULL);
}
END_TEST

/* --- refusals: each names the field; a refused render leaves ret alone --- */

static char *key_newline[] = { "ssh-ed25519 AAAA a@b\nssh-rsa BBBB evil@c", NULL };
static char *key_empty[] = { "ssh-ed25519 AAAA a@b", "", NULL };
static char *deb_dollar[] = { "https://example.org/a.deb", "https://example.org/b.deb$https://evil/c.deb", NULL };
static char *deb_quote[] = { "https://example.org/a'.deb", NULL };
static char *deb_option[] = { "-O/etc/passwd", NULL };
static char *deb_file[] = { "file:///tmp/a.deb", NULL };
static Share share_quote[] = { { "/srv/a", "/mnt/a'b" } };
static Share share_space[] = { { "/srv/a", "/mnt/a b" } };
static Share share_relative[] = { { "/srv/a", "mnt/a" } };
static Share share_dotdot[] = { { "/srv/a", "/mnt/../etc" } };
static Share share_root[] = { { "/srv/a", "//" } };
static Share share_hash[] = { { "/srv/a", "/mnt/#x" } };
static Share share_null[] = { { "/srv/a", NULL } };
static Share share_second_newline[] = { { "/srv/a", "/mnt/a" }, { "/srv/b", "/mnt/b\n/x" } };
static const CloudInitBlob tool_unknown[] = { { .name = "evil", .data = "x", .size = 1 } };
static const CloudInitBlob tool_twice[] = { { .name = "ctr-enc", .data = "x", .size = 1 },
                                            { .name = "ctr-enc", .data = "y", .size = 1 } };
static const CloudInitBlob tool_empty[] = { { .name = "ctd-decoder", .data = "", .size = 0 } };

typedef struct Refusal {
        const char *name;
        void (*mutate)(VmSpec *spec, CloudInitInput *in);
        const char *field;          /* the message starts with it */
} Refusal;

#define REFUSAL(n, body)                                                  \
        static void mutate_##n(VmSpec *spec, CloudInitInput *in) { body; }

REFUSAL(hostname_newline, spec->guest.hostname = "hydra\nruncmd: [reboot]")
REFUSAL(hostname_space, spec->guest.hostname = "hydra vm")
REFUSAL(hostname_quote, spec->guest.hostname = "hydra\"vm")
REFUSAL(hostname_colon, spec->guest.hostname = "hydra: {}")
REFUSAL(hostname_dash, spec->guest.hostname = "-hydra")
REFUSAL(hostname_empty_label, spec->guest.hostname = "hydra..vm")
REFUSAL(hostname_long_label,
        spec->guest.hostname = "a1234567890123456789012345678901234567890123456789012345678901234")
REFUSAL(hostname_unicode, spec->guest.hostname = "hydr\xc3\xa4")
REFUSAL(username_dash, spec->guest.username = "--badname")
REFUSAL(username_utf8, spec->guest.username = "bad\xc3\x28utf8")
REFUSAL(username_overlong, spec->guest.username = "slash\xc0\xaf")
REFUSAL(password_hash_newline, spec->guest.password_hash = "$6$salt$hash\nroot::0:0")
REFUSAL(password_hash_quote, spec->guest.password_hash = "$6$salt$\"hash")
REFUSAL(ssh_key_newline, spec->guest.ssh_authorized_keys = key_newline)
REFUSAL(ssh_key_empty, spec->guest.ssh_authorized_keys = key_empty)
REFUSAL(guest_ip, spec->network.guest_ip = "10.0.2.15; reboot")
REFUSAL(guest_ip_v6, spec->network.guest_ip = "fe80::1")
REFUSAL(gateway_newline, spec->network.gateway = "10.0.2.2\n")
REFUSAL(dns, spec->network.dns = "10.0.2.003")
REFUSAL(prefix_len, spec->network.prefix_len = 33)
REFUSAL(mac_quote, spec->network.mac = "52:54:00:12:34:5\"")
REFUSAL(mac_multicast, spec->network.mac = "01:00:5e:00:00:01")
REFUSAL(kubelet_enum, spec->shares.kubelet = (KubeletShares) 7)
REFUSAL(diod_port, spec->shares.diod_port = 70000)
REFUSAL(extra_quote, spec->shares.extra = share_quote; spec->shares.n_extra = 1)
REFUSAL(extra_space, spec->shares.extra = share_space; spec->shares.n_extra = 1)
REFUSAL(extra_relative, spec->shares.extra = share_relative; spec->shares.n_extra = 1)
REFUSAL(extra_dotdot, spec->shares.extra = share_dotdot; spec->shares.n_extra = 1)
REFUSAL(extra_root, spec->shares.extra = share_root; spec->shares.n_extra = 1)
REFUSAL(extra_hash, spec->shares.extra = share_hash; spec->shares.n_extra = 1)
REFUSAL(extra_null, spec->shares.extra = share_null; spec->shares.n_extra = 1)
REFUSAL(extra_second, spec->shares.extra = share_second_newline; spec->shares.n_extra = 2)
REFUSAL(k3s_version_semicolon, spec->software.k3s_diod = true; spec->software.k3s_version = "v1.32.6+k3s1; reboot")
REFUSAL(k3s_version_subst, spec->software.k3s_diod = true; spec->software.k3s_version = "$(reboot)")
REFUSAL(k3s_version_quote, spec->software.k3s_diod = true; spec->software.k3s_version = "v1\"")
REFUSAL(k3s_version_option, spec->software.k3s_diod = true; spec->software.k3s_version = "-v1")
REFUSAL(csi_url_space, spec->software.csi_grpc_proxy_url = "https://example.org/a b-")
REFUSAL(csi_url_scheme, spec->software.csi_grpc_proxy_url = "ftp://example.org/proxy-")
REFUSAL(csi_url_option, spec->software.csi_grpc_proxy_url = "-O/etc/passwd")
REFUSAL(csi_url_no_host, spec->software.csi_grpc_proxy_url = "https:///proxy-")
REFUSAL(debian_arch, in->debian_arch = "amd64 -O /etc/passwd")
REFUSAL(arch_enum, spec->arch = (Arch) 9)
REFUSAL(extra_deb_dollar, spec->software.extra_debs = deb_dollar)
REFUSAL(extra_deb_quote, spec->software.extra_debs = deb_quote)
REFUSAL(extra_deb_option, spec->software.extra_debs = deb_option)
REFUSAL(extra_deb_file, spec->software.extra_debs = deb_file)
REFUSAL(kernel_package_space, spec->software.kernel_package = "linux-image-amd64 evil")
REFUSAL(kernel_package_upper, spec->software.kernel_package = "Linux-image")
REFUSAL(kernel_package_option, spec->software.kernel_package = "-oAPT::x=y")
REFUSAL(shmem_enum, spec->devices.shmem = (Shmem) 5)
REFUSAL(sandbox_image_quote, spec->software.sandbox_image = "pause\"\n[plugins]")
REFUSAL(sandbox_image_option, spec->software.sandbox_image = "-pause")
REFUSAL(sandbox_image_url_quote, spec->software.sandbox_image_url = "http://10.0.2.2/\"pause.tar")
REFUSAL(crismux_url_option, spec->software.k3s_diod = true; spec->software.crismux_url = "-O/etc/passwd")
REFUSAL(crismux_sha256_short, spec->software.k3s_diod = true; spec->software.crismux_sha256 = "abc")
REFUSAL(tool_unknown, in->tools = tool_unknown; in->n_tools = 1)
REFUSAL(tool_twice, in->tools = tool_twice; in->n_tools = 2)
REFUSAL(tool_empty, in->tools = tool_empty; in->n_tools = 1)
REFUSAL(tools_missing, spec->bare.encrypted_tools = true)

#define R(n, f) { #n, mutate_##n, f }
static const Refusal refusals[] = {
        R(hostname_newline, "guest.hostname: "),
        R(hostname_space, "guest.hostname: "),
        R(hostname_quote, "guest.hostname: "),
        R(hostname_colon, "guest.hostname: "),
        R(hostname_dash, "guest.hostname: "),
        R(hostname_empty_label, "guest.hostname: "),
        R(hostname_long_label, "guest.hostname: "),
        R(hostname_unicode, "guest.hostname: "),
        R(username_dash, "guest.username: "),
        R(username_utf8, "guest.username: "),
        R(username_overlong, "guest.username: "),
        R(password_hash_newline, "guest.password_hash: "),
        R(password_hash_quote, "guest.password_hash: "),
        R(ssh_key_newline, "guest.ssh_authorized_keys[0]: "),
        R(ssh_key_empty, "guest.ssh_authorized_keys[1]: "),
        R(guest_ip, "network.guest_ip: "),
        R(guest_ip_v6, "network.guest_ip: "),
        R(gateway_newline, "network.gateway: "),
        R(dns, "network.dns: "),
        R(prefix_len, "network.prefix_len: "),
        R(mac_quote, "network.mac: "),
        R(mac_multicast, "network.mac: "),
        R(kubelet_enum, "shares.kubelet: "),
        R(sandbox_image_quote, "software.sandbox_image: "),
        R(sandbox_image_option, "software.sandbox_image: "),
        R(sandbox_image_url_quote, "software.sandbox_image_url: "),
        R(crismux_url_option, "software.crismux_url: "),
        R(crismux_sha256_short, "software.crismux_sha256: "),
        R(diod_port, "shares.diod_port: "),
        R(extra_quote, "shares.extra[0].guest_path: "),
        R(extra_space, "shares.extra[0].guest_path: "),
        R(extra_relative, "shares.extra[0].guest_path: "),
        R(extra_dotdot, "shares.extra[0].guest_path: "),
        R(extra_root, "shares.extra[0].guest_path: "),
        R(extra_hash, "shares.extra[0].guest_path: "),
        R(extra_null, "shares.extra[0].guest_path: "),
        R(extra_second, "shares.extra[1].guest_path: "),
        R(k3s_version_semicolon, "software.k3s_version: "),
        R(k3s_version_subst, "software.k3s_version: "),
        R(k3s_version_quote, "software.k3s_version: "),
        R(k3s_version_option, "software.k3s_version: "),
        R(csi_url_space, "software.csi_grpc_proxy_url: "),
        R(csi_url_scheme, "software.csi_grpc_proxy_url: "),
        R(csi_url_option, "software.csi_grpc_proxy_url: "),
        R(csi_url_no_host, "software.csi_grpc_proxy_url: "),
        R(debian_arch, "debian_arch: "),
        R(arch_enum, "arch: "),
        R(extra_deb_dollar, "software.extra_debs[1]: "),
        R(extra_deb_quote, "software.extra_debs[0]: "),
        R(extra_deb_option, "software.extra_debs[0]: "),
        R(extra_deb_file, "software.extra_debs[0]: "),
        R(kernel_package_space, "software.kernel_package: "),
        R(kernel_package_upper, "software.kernel_package: "),
        R(kernel_package_option, "software.kernel_package: "),
        R(shmem_enum, "devices.shmem: "),
        R(tool_unknown, "tools[0]: "),
        R(tool_twice, "tools[1]: "),
        R(tool_empty, "tools[0]: "),
        R(tools_missing, "bare.encrypted_tools: "),
};

START_TEST(test_refused) {
        const Refusal *t = &refusals[_i];
        VmSpec spec = { .arch = ARCH_X86_64 };
        CloudInitInput in = { .spec = &spec };
        CloudInitFiles f = {};
        HydraError e = {};
        int r;

        t->mutate(&spec, &in);
        r = cloud_init_render(&in, &f, &e);
        ck_assert_msg(r == -EINVAL, "%s: got %d (%s), want -EINVAL", t->name, r, e.message);
        ck_assert_int_eq(e.code, -EINVAL);
        ck_assert_msg(strncmp(e.message, t->field, strlen(t->field)) == 0,
                      "%s: message '%s' does not start with '%s'", t->name, e.message, t->field);
        ck_assert_msg(!strchr(e.message, '\n'), "%s: message has a raw newline: %s", t->name, e.message);
        ck_assert_ptr_null(f.user_data);
        ck_assert_ptr_null(f.meta_data);
}
END_TEST

/* The value is named in the message (escaped), except a password hash. */
START_TEST(test_refusal_messages) {
        VmSpec spec = { .arch = ARCH_X86_64, .guest = { .hostname = "hydra\nvm" } };
        CloudInitInput in = { .spec = &spec };
        CloudInitFiles f = {};
        HydraError e = {};

        ck_assert_int_eq(cloud_init_render(&in, &f, &e), -EINVAL);
        ck_assert_str_eq(e.message, "guest.hostname: 'hydra\\nvm' contains a newline (allowed: letters, digits, '-' "
                                    "and '.')");

        spec.guest.hostname = NULL;
        spec.shares.extra = share_quote;
        spec.shares.n_extra = 1;
        ck_assert_int_eq(cloud_init_render(&in, &f, &e), -EINVAL);
        ck_assert_ptr_nonnull(strstr(e.message, "'/mnt/a\\'b' contains '''"));

        spec.shares.n_extra = 0;
        spec.guest.password_hash = "$6$secret$\"x";
        ck_assert_int_eq(cloud_init_render(&in, &f, &e), -EINVAL);
        ck_assert_ptr_null(strstr(e.message, "secret"));
}
END_TEST

static Suite *cloudinit_suite(void) {
        Suite *s = suite_create("cloudinit");
        TCase *tc;

        /* Each seed goes through cloud-init and python: about a second apiece. */
        tc = tcase_create("golden");
        tcase_set_timeout(tc, 60);
        tcase_add_loop_test(tc, test_golden, 0, (int) ELEMENTSOF(golden_cases));
        tcase_add_test(tc, test_deterministic);
        tcase_add_test(tc, test_supervision_not_in_seed);
        tcase_add_test(tc, test_injection_lands_as_strings);
        suite_add_tcase(s, tc);

        tc = tcase_create("content");
        tcase_add_test(tc, test_ndctl_only_for_nvdimm);
        tcase_add_test(tc, test_crismux_optional);
        tcase_add_test(tc, test_sandbox_image);
        tcase_add_test(tc, test_tcp_shares_netdev);
        tcase_add_test(tc, test_nic_mac_matches_qemu);
        tcase_add_test(tc, test_unused_fields_ignored);
        tcase_add_test(tc, test_no_input);
        suite_add_tcase(s, tc);

        tc = tcase_create("refused");
        tcase_add_loop_test(tc, test_refused, 0, (int) ELEMENTSOF(refusals));
        tcase_add_test(tc, test_refusal_messages);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(cloudinit_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
