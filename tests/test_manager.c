/* SPDX-License-Identifier: MIT */
/* The manager without QEMU: manager_load of a state dir (nothing there, a stored spec with its state record, a
 * spec or a state record that cannot be read: reported with the file's name, the other role still served), the
 * lookup by role and the settings it hands out. The codec is the test's own: "cpus=N" is a spec, anything else
 * is not. Everything goes through manager.h and vm.h (vm_get_status: the snapshot api.c reads too). */
#include <check.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"
#include "fetch.h"
#include "fs.h"
#include "macro.h"
#include "manager.h"
#include "vm.h"

static char tmpdir[] = "/tmp/test-manager-XXXXXX";
static HydraConfig config;
static sd_event *event;
static Manager *manager;
static char *log_path;
static int saved_stderr = -1;

/* "cpus=N", then optionally " image=URL", " artifact=URL" (with bare.encrypted_tools, as a cloud image with
 * the encrypted-container tools has it), " forward=GUEST_PORT" (a TCP forward from host port 40000). */
static int decode(const void *data, size_t size, VmSpec *ret_spec, HydraError *err) {
        _cleanup_free_ char *buf = NULL;
        VmSpec spec = { .memory_mib = 64 };
        char *tok, *save = NULL;
        unsigned cpus;
        char extra;

        if (size >= 512)
                return hydra_error_set(err, -EBADMSG, "not a VmSpec (too long)");
        buf = strndup(data, size);
        ck_assert_ptr_nonnull(buf);
        if (memchr(data, '\0', size))
                return hydra_error_set(err, -EBADMSG, "not a VmSpec");
        tok = strtok_r(buf, " ", &save);
        if (!tok || sscanf(tok, "cpus=%u%c", &cpus, &extra) != 1)
                return hydra_error_set(err, -EBADMSG, "not a VmSpec");
        spec.cpus = cpus;
        while ((tok = strtok_r(NULL, " ", &save))) {
                if (strncmp(tok, "image=", 6) == 0)
                        ck_assert_ptr_nonnull(spec.image.url = strdup(tok + 6));
                else if (strncmp(tok, "artifact=", 9) == 0) {
                        ck_assert_ptr_nonnull(spec.bare.artifact.url = strdup(tok + 9));
                        spec.bare.encrypted_tools = true;
                } else if (strncmp(tok, "forward=", 8) == 0) {
                        ck_assert_ptr_nonnull(spec.forwards = calloc(1, sizeof(PortForward)));
                        spec.forwards[0] = (PortForward) { .host_port = 40000, .guest_port = (uint32_t) atoi(tok + 8),
                                                           .protocol = FORWARD_TCP };
                        spec.n_forwards = 1;
                } else {
                        vm_spec_done(&spec);
                        return hydra_error_set(err, -EBADMSG, "not a VmSpec");
                }
        }
        *ret_spec = spec;
        return 0;
}

static int encode(const VmSpec *spec, void **ret_data, size_t *ret_size) {
        char fwd[32] = "";
        char *s;
        int n;

        if (spec->n_forwards > 0)
                (void) snprintf(fwd, sizeof(fwd), " forward=%u", (unsigned) spec->forwards[0].guest_port);
        n = asprintf(&s, "cpus=%u%s%s%s%s%s", spec->cpus, spec->image.url ? " image=" : "", strempty(spec->image.url),
                     spec->bare.artifact.url ? " artifact=" : "", strempty(spec->bare.artifact.url), fwd);

        if (n < 0)
                return -ENOMEM;
        *ret_data = s;
        *ret_size = (size_t) n;
        return 0;
}

static const SpecCodec codec = { .encode = encode, .decode = decode };

/* The one place that reads a Vm's fields (vm.h): the status snapshot of the redesign replaces it. */
typedef struct Seen {
        bool registered;
        const char *state;
        unsigned cpus;
        int exit_signal;
        char last_error[sizeof(((HydraError *) NULL)->message)];
} Seen;

static Seen seen(Role role) {
        Vm *vm = manager_get_vm(manager, role);
        Seen s = {};

        VmStatus st;

        ck_assert_ptr_nonnull(vm);
        vm_get_status(vm, &st);
        s.registered = st.registered;
        s.state = vm_state_to_string(st.state);
        s.cpus = st.spec ? st.spec->cpus : 0;
        s.exit_signal = st.last_exit->signal;
        if (st.last_error)
                (void) snprintf(s.last_error, sizeof(s.last_error), "%s", st.last_error);
        return s;
}

static char *at(const char *rel) {
        char *p;

        ck_assert_int_ge(asprintf(&p, "%s/%s", tmpdir, rel), 0);
        return p;
}

static void write_file(const char *rel, const char *data, mode_t mode) {
        _cleanup_free_ char *p = at(rel);
        int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, data, strlen(data)), (ssize_t) strlen(data));
        ck_assert_int_eq(fchmod(fd, mode), 0);
        close(fd);
}

static void make_dir(const char *rel) {
        _cleanup_free_ char *p = at(rel);

        ck_assert_int_eq(mkdir(p, 0750), 0);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        return remove(path);
}

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        config_init(&config);
        free(config.state_dir);
        free(config.run_dir);
        config.state_dir = at("state");
        config.run_dir = at("run");
        ck_assert_int_eq(config_finish(&config, NULL), 0);
        ck_assert_int_ge(sd_event_new(&event), 0);
        ck_assert_int_eq(manager_new(event, &config, &codec, &manager), 0);
}

static void teardown(void) {
        manager = manager_free(manager);
        event = sd_event_unref(event);
        config_done(&config);
        log_path = mfree(log_path);
        (void) nftw(tmpdir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
        strcpy(tmpdir, "/tmp/test-manager-XXXXXX");
}

/* manager_load with stderr (where hydrad logs outside systemd) going to a file; returns its result. */
static int load(HydraError *err) {
        int fd, r;

        log_path = at("log");
        fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        saved_stderr = dup(STDERR_FILENO);
        ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
        close(fd);
        hydra_error_clear(err);
        r = manager_load(manager, err);
        ck_assert_int_eq(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
        close(saved_stderr);
        return r;
}

static char *logged(void) {
        char *buf = calloc(1, 65536);
        int fd = open(log_path, O_RDONLY | O_CLOEXEC);

        ck_assert_ptr_nonnull(buf);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_ge(read(fd, buf, 65535), 0);
        close(fd);
        return buf;
}

#define assert_logged(log, needle) ck_assert_msg(strstr((log), (needle)), "not logged: %s\nlog:\n%s", (needle), (log))

START_TEST(test_load_nothing_stored) {
        _cleanup_free_ char *state = at("state"), *run = at("run");
        struct stat st;
        HydraError err;

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        ck_assert_int_eq(stat(state, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        ck_assert_int_eq(stat(run, &st), 0);
        ck_assert(S_ISDIR(st.st_mode));
        for (Role role = 0; role < _ROLE_MAX; role++) {
                ck_assert(!seen(role).registered);
                ck_assert_str_eq(seen(role).state, "defined");
        }
}
END_TEST

/* A stored spec with its state record: registered as it was left (a crash), the other role untouched. */
START_TEST(test_load_spec_and_state) {
        HydraError err;
        Seen host;

        make_dir("state");
        make_dir("state/host");
        write_file("state/host/spec.pb", "cpus=3", 0600);
        write_file("state/host/state.json",
                   "{\"state\": \"crashed\", \"last_exit\": {\"exited\": true, \"code\": -1, \"signal\": 9, "
                   "\"reason\": \"crashed\", \"time_usec\": 1700000000000000}, \"last_error\": \"QEMU was killed\"}",
                   0600);

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        host = seen(ROLE_HOST);
        ck_assert(host.registered);
        ck_assert_uint_eq(host.cpus, 3);
        ck_assert_str_eq(host.state, "crashed");
        ck_assert_int_eq(host.exit_signal, 9);
        ck_assert_str_eq(host.last_error, "QEMU was killed");
        ck_assert(!seen(ROLE_ISOLATED).registered);
}
END_TEST

/* One role's spec cannot be read: that role is left unregistered and the log names the file and why; the other
 * role is loaded all the same, and the load itself succeeds. */
static void check_one_bad_spec(Role bad_role, const char *bad, mode_t mode, const char *why) {
        Role good_role = bad_role == ROLE_HOST ? ROLE_ISOLATED : ROLE_HOST;
        const char *bad_name = role_to_string(bad_role), *good_name = role_to_string(good_role);
        _cleanup_free_ char *log = NULL, *bad_file = NULL, *good_file = NULL, *bad_says = NULL, *good_says = NULL;
        HydraError err;

        ck_assert_int_ge(asprintf(&bad_file, "state/%s/spec.pb", bad_name), 0);
        ck_assert_int_ge(asprintf(&good_file, "state/%s/spec.pb", good_name), 0);
        ck_assert_int_ge(asprintf(&bad_says, "VM '%s': cannot load its stored spec", bad_name), 0);
        ck_assert_int_ge(asprintf(&good_says, "VM '%s': cannot load", good_name), 0);
        make_dir("state");
        make_dir("state/host");
        make_dir("state/isolated");
        write_file(good_file, "cpus=2", 0600);
        write_file(bad_file, bad, mode);

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        ck_assert(seen(good_role).registered);
        ck_assert_uint_eq(seen(good_role).cpus, 2);
        ck_assert(!seen(bad_role).registered);
        log = logged();
        assert_logged(log, bad_says);
        bad_file = mfree(bad_file);
        ck_assert_int_ge(asprintf(&bad_file, "%s/state/%s/spec.pb", tmpdir, bad_name), 0);
        assert_logged(log, bad_file);
        assert_logged(log, why);
        ck_assert_msg(!strstr(log, good_says), "%s", log);
}

START_TEST(test_corrupt_spec) {
        /* The first role loaded: the second is loaded after it all the same. */
        check_one_bad_spec(ROLE_HOST, "\x08\x96\x01garbage", 0600, "not a VmSpec");
}
END_TEST

START_TEST(test_empty_spec) {
        check_one_bad_spec(ROLE_ISOLATED, "", 0600, "is empty (truncated)");
}
END_TEST

START_TEST(test_invalid_spec) {
        /* Decodes, but asks for more CPUs than a VM may have: validation refuses it. */
        check_one_bad_spec(ROLE_ISOLATED, "cpus=300", 0600, "cpus");
}
END_TEST

START_TEST(test_spec_others_may_write) {
        check_one_bad_spec(ROLE_ISOLATED, "cpus=1", 0622, "refusing to trust it");
}
END_TEST

/* A state record that is not one: the spec is still loaded (as defined), the record reported by name. */
START_TEST(test_corrupt_state_record) {
        _cleanup_free_ char *log = NULL, *file = at("state/host/state.json");
        HydraError err;

        make_dir("state");
        make_dir("state/host");
        make_dir("state/isolated");
        write_file("state/host/spec.pb", "cpus=2", 0600);
        write_file("state/host/state.json", "{\"state\": \"crash", 0600);
        write_file("state/isolated/spec.pb", "cpus=1", 0600);
        write_file("state/isolated/state.json",
                   "{\"state\": \"stopped\", \"last_exit\": {\"exited\": true, \"code\": 0, \"signal\": 0, "
                   "\"reason\": \"guest-shutdown\", \"time_usec\": 1}, \"last_error\": \"\"}", 0600);

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        ck_assert(seen(ROLE_HOST).registered);
        ck_assert_str_eq(seen(ROLE_HOST).state, "defined");
        ck_assert(seen(ROLE_ISOLATED).registered);
        ck_assert_str_eq(seen(ROLE_ISOLATED).state, "stopped");
        log = logged();
        assert_logged(log, "VM 'host'");
        assert_logged(log, "not a valid state record");
        assert_logged(log, file);
}
END_TEST

/* A state dir that cannot be made fails the load, naming it. */
START_TEST(test_state_dir_unusable) {
        _cleanup_free_ char *dir = at("file/state");
        HydraError err;

        write_file("file", "not a directory", 0600);
        manager = manager_free(manager);
        free(config.state_dir);
        config.state_dir = strdup(dir);
        ck_assert_ptr_nonnull(config.state_dir);
        ck_assert_int_eq(manager_new(event, &config, &codec, &manager), 0);
        ck_assert_int_lt(load(&err), 0);
        ck_assert_msg(strstr(err.message, dir), "%s", err.message);
}
END_TEST

START_TEST(test_lookup_and_settings) {
        Vm *host = manager_get_vm(manager, ROLE_HOST), *isolated = manager_get_vm(manager, ROLE_ISOLATED);

        ck_assert_ptr_nonnull(host);
        ck_assert_ptr_nonnull(isolated);
        ck_assert_ptr_ne(host, isolated);
        ck_assert_ptr_eq(manager_get_vm(manager, ROLE_HOST), host);
        ck_assert_ptr_null(manager_get_vm(manager, _ROLE_MAX));
        ck_assert_ptr_null(manager_get_vm(manager, (Role) -1));

        /* Each Vm is its role, named as the API names it. */
        ck_assert_int_eq(vm_role(host), ROLE_HOST);
        ck_assert_int_eq(vm_role(isolated), ROLE_ISOLATED);
        ck_assert_str_eq(vm_name(host), "host");
        ck_assert_str_eq(vm_name(isolated), "isolated");
        /* The VmContext the manager gave them: their files are under the configured directories. */
        ck_assert_ptr_nonnull(strstr(vm_console_log(host), config.state_dir));
        ck_assert_str_eq(vm_console_log(isolated) + strlen(vm_console_log(isolated)) - strlen("/isolated/console.log"),
                         "/isolated/console.log");
}
END_TEST

/* --- RegisterVm through the Vm: the password hashed on a worker, spec.pb durable before it takes effect --- */

typedef struct Done {
        int calls;
        int r;
        char message[sizeof(((HydraError *) NULL)->message)];
} Done;

static void on_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        Done *d = userdata;

        d->calls++;
        d->r = r;
        (void) snprintf(d->message, sizeof(d->message), "%s", err ? err->message : "");
}

static void run_until(const Done *d, int calls) {
        for (int i = 0; i < 1000 && d->calls < calls; i++)
                ck_assert_int_ge(sd_event_run(event, 10 * 1000), 0);
        ck_assert_int_eq(d->calls, calls);
}

static VmSpec small_spec(unsigned cpus, const char *password) {
        VmSpec spec = { .cpus = cpus, .memory_mib = 64 };

        if (password)
                ck_assert_ptr_nonnull(spec.guest.password = strdup(password));
        return spec;
}

static int register_vm(Vm *vm, unsigned cpus, const char *password, Done *d, HydraError *err) {
        VmSpec spec = small_spec(cpus, password);
        VmOp *op = NULL;
        int r;

        hydra_error_clear(err);
        r = vm_register(vm, &spec, false, on_done, d, &op, err);
        vm_spec_done(&spec);
        return r;
}

START_TEST(test_register_async) {
        Vm *vm = manager_get_vm(manager, ROLE_HOST);
        _cleanup_free_ char *spec_file = at("state/host/spec.pb");
        _cleanup_free_ char *hash = NULL;
        Done d = {}, other = {};
        HydraError err;

        /* A password to hash: the call returns at once, the VM is not registered yet. */
        ck_assert_int_eq(register_vm(vm, 2, "correct horse", &d, &err), 0);
        ck_assert(!vm_is_registered(vm));
        ck_assert_int_eq(access(spec_file, F_OK), -1);
        /* One registration at a time. */
        ck_assert_int_eq(register_vm(vm, 3, NULL, &other, &err), -EBUSY);
        ck_assert_msg(strstr(err.message, "being registered"), "%s", err.message);

        run_until(&d, 1);
        ck_assert_msg(d.r == 1, "changed: %d %s", d.r, d.message);
        ck_assert(vm_is_registered(vm));
        ck_assert_int_eq(vm_get_spec(vm)->cpus, 2);
        ck_assert_ptr_null(vm_get_spec(vm)->guest.password);
        ck_assert_ptr_nonnull(vm_get_spec(vm)->guest.password_hash);
        ck_assert_msg(strncmp(vm_get_spec(vm)->guest.password_hash, "$y$", 3) == 0, "yescrypt: %s",
                      vm_get_spec(vm)->guest.password_hash);
        ck_assert_int_eq(access(spec_file, F_OK), 0); /* durable before the VM took it */
        hash = strdup(vm_get_spec(vm)->guest.password_hash);

        /* The same password again: checked against the stored hash (on the worker), kept, nothing changed. */
        ck_assert_int_eq(register_vm(vm, 2, "correct horse", &d, &err), 0);
        run_until(&d, 2);
        ck_assert_msg(d.r == 0, "unchanged: %d %s", d.r, d.message);
        ck_assert_str_eq(vm_get_spec(vm)->guest.password_hash, hash);

        /* No password: nothing to hash, the same spec answers at once. */
        {
                VmSpec spec = small_spec(2, NULL);
                VmOp *op = NULL;

                ck_assert_ptr_nonnull(spec.guest.password_hash = strdup(hash));
                ck_assert_int_eq(vm_register(vm, &spec, false, on_done, &d, &op, &err), 1);
                vm_spec_done(&spec);
        }

        /* A refusal found while hashing comes back through the callback, naming the field. */
        {
                char long_password[600];

                memset(long_password, 'x', sizeof(long_password) - 1);
                long_password[sizeof(long_password) - 1] = '\0';
                ck_assert_int_eq(register_vm(vm, 2, long_password, &d, &err), 0);
                run_until(&d, 3);
                ck_assert_int_eq(d.r, -EINVAL);
                ck_assert_msg(strstr(d.message, "guest.password") && !strstr(d.message, "xxxx"), "%s", d.message);
                ck_assert_str_eq(vm_get_spec(vm)->guest.password_hash, hash);
        }
}
END_TEST

/* A destroy while a new spec is being hashed: the registration is cancelled, and nothing of the VM stays. */
START_TEST(test_destroy_cancels_register) {
        Vm *vm = manager_get_vm(manager, ROLE_ISOLATED);
        _cleanup_free_ char *vm_dir = at("state/isolated");
        Done d = {}, destroyed = {};
        HydraError err;
        VmOp *op = NULL;
        int r;

        ck_assert_int_eq(register_vm(vm, 1, NULL, &d, &err), 0);
        run_until(&d, 1);
        ck_assert_int_eq(d.r, 1);
        ck_assert_int_eq(access(vm_dir, F_OK), 0);

        ck_assert_int_eq(register_vm(vm, 4, "another one", &d, &err), 0);
        r = vm_destroy(vm, false, on_done, &destroyed, &op, &err);
        ck_assert_msg(r >= 0, "%s", err.message);
        run_until(&d, 2);
        ck_assert_int_eq(d.r, -ECANCELED);
        ck_assert_msg(strstr(d.message, "destroy"), "%s", d.message);
        if (r == 0)
                run_until(&destroyed, 1);
        ck_assert(!vm_is_registered(vm));
        ck_assert_int_eq(access(vm_dir, F_OK), -1);
}
END_TEST

/* --- the download cache keeps only what a registered spec can use --- */

#define URL_A "http://images.test/a.qcow2"
#define URL_B "http://images.test/b.qcow2"
#define URL_C "http://images.test/tools.tar.gz"

static char *cache_entry(const char *url) {
        _cleanup_free_ char *cache = at("state/cache");
        char *e = fetch_cache_entry(cache, url);

        ck_assert_ptr_nonnull(e);
        return e;
}

/* A cached download of url: its entry with file in it (data, data.part, ...). */
static char *make_cached(const char *url, const char *file) {
        char *e = cache_entry(url);
        _cleanup_free_ char *p = NULL;

        ck_assert_int_eq(mkdir_p(e, 0755), 0);
        ck_assert_int_ge(asprintf(&p, "%s/%s", e, file), 0);
        write_file(p + strlen(tmpdir) + 1, "some bytes of a cloud image", 0644);
        return e;
}

static bool exists(const char *path) {
        return access(path, F_OK) == 0;
}

/* Runs the loop (stderr into the log file) until path is gone, for at most 10 s, then until it has nothing left
 * to do for 50 ms (the removal's completion comes back after it). */
static void run_until_gone(const char *path) {
        int fd;

        if (!log_path)
                log_path = at("log");
        fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        saved_stderr = dup(STDERR_FILENO);
        ck_assert_int_eq(dup2(fd, STDERR_FILENO), STDERR_FILENO);
        close(fd);
        for (int i = 0; i < 1000 && exists(path); i++)
                ck_assert_int_ge(sd_event_run(event, 10 * 1000), 0);
        for (int i = 0; i < 100 && sd_event_run(event, 50 * 1000) > 0; i++)
                ;
        ck_assert_int_eq(dup2(saved_stderr, STDERR_FILENO), STDERR_FILENO);
        close(saved_stderr);
        ck_assert_msg(!exists(path), "still there: %s", path);
}

static void register_spec(Vm *vm, const char *image, const char *artifact, Done *d) {
        VmSpec spec = small_spec(1, NULL);
        HydraError err;
        VmOp *op = NULL;
        int calls = d->calls, r;

        if (image)
                ck_assert_ptr_nonnull(spec.image.url = strdup(image));
        if (artifact) {
                ck_assert_ptr_nonnull(spec.bare.artifact.url = strdup(artifact));
                spec.bare.encrypted_tools = true;
        }
        hydra_error_clear(&err);
        r = vm_register(vm, &spec, false, on_done, d, &op, &err);
        vm_spec_done(&spec);
        ck_assert_msg(r == 0, "register: %d %s", r, err.message);
        run_until(d, calls + 1);
        ck_assert_msg(d->r == 1, "changed: %d %s", d->r, d->message);
}

/* A registration that replaces a spec's image or artifact URL removes the old download, once the new spec is
 * durable, unless the other VM's spec still names it. */
START_TEST(test_reregister_drops_old_download) {
        Vm *host = manager_get_vm(manager, ROLE_HOST), *isolated = manager_get_vm(manager, ROLE_ISOLATED);
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL, *log = NULL;
        Done d = {};

        register_spec(host, URL_A, NULL, &d);
        register_spec(isolated, URL_A, URL_C, &d);
        a = make_cached(URL_A, "data");
        b = make_cached(URL_B, "data");
        c = make_cached(URL_C, "data.part");

        /* The isolated VM moves to B and drops its artifact: C goes, A stays (the host's spec names it). */
        register_spec(isolated, URL_B, NULL, &d);
        run_until_gone(c);
        ck_assert(exists(a));
        ck_assert(exists(b));
        log = logged();
        assert_logged(log, "VM 'isolated': removed cached download ");
        assert_logged(log, c + strlen(c) - 64);

        /* The host moves to B too: nothing names A any more. */
        register_spec(host, URL_B, NULL, &d);
        run_until_gone(a);
        ck_assert(exists(b));

        /* Back to A and away from it again: A goes, B (the host's) stays. */
        register_spec(isolated, URL_A, NULL, &d);
        a = mfree(a);
        a = make_cached(URL_A, "data");
        register_spec(isolated, URL_B, NULL, &d);
        run_until_gone(a);
        ck_assert(exists(b));
}
END_TEST

/* Writes a qcow2 header naming backing as its backing file (all cache.c reads of an overlay). */
static void write_overlay(const char *rel, const char *backing) {
        unsigned char h[512] = { 'Q', 'F', 'I', 0xfb, 0, 0, 0, 3 };
        size_t n = strlen(backing);
        _cleanup_free_ char *p = at(rel);
        int fd;

        h[15] = 64;                    /* backing_file_offset */
        h[19] = (unsigned char) n;     /* backing_file_size */
        memcpy(h + 64, backing, n);
        fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, h, sizeof(h)), (ssize_t) sizeof(h));
        close(fd);
}

/* At start-up, once the specs are loaded: what no registered spec names goes (an earlier spec's image, a partial
 * download, a stray file), logged with its size; what a spec names stays, and so does the base a VM's disk is an
 * overlay on. */
START_TEST(test_startup_sweep) {
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL, *stray = at("state/cache/tmp.1234"), *log = NULL;
        _cleanup_free_ char *base = NULL, *says = NULL;
        HydraError err;

        make_dir("state");
        make_dir("state/host");
        make_dir("state/isolated");
        write_file("state/host/spec.pb", "cpus=1 image=" URL_A, 0600);
        a = make_cached(URL_A, "data");
        b = make_cached(URL_B, "data");
        c = make_cached(URL_C, "data.part");
        write_file("state/cache/tmp.1234", "x", 0600);
        /* The isolated VM is not registered, but its disk (reuse_disk_on_change kept it) leans on C's base. */
        ck_assert_int_ge(asprintf(&base, "%s/image", c), 0);
        write_overlay("state/isolated/disk.qcow2", base);

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        run_until_gone(b);
        run_until_gone(stray);
        ck_assert(exists(a));
        ck_assert(exists(c));
        log = logged();
        ck_assert_int_ge(asprintf(&says, "removed cached download %s (", b + strlen(b) - 64), 0);
        assert_logged(log, says);
        assert_logged(log, "KiB): no registered VM uses it");
}
END_TEST

/* A stored spec that cannot be read may name downloads: nothing is swept, and the log says why. */
START_TEST(test_startup_sweep_unreadable_spec) {
        _cleanup_free_ char *b = NULL, *log = NULL;
        HydraError err;

        make_dir("state");
        make_dir("state/host");
        write_file("state/host/spec.pb", "garbage", 0600);
        b = make_cached(URL_B, "data");

        ck_assert_msg(load(&err) == 0, "%s", err.message);
        for (int i = 0; i < 20; i++)
                ck_assert_int_ge(sd_event_run(event, 10 * 1000), 0);
        ck_assert(exists(b));
        log = logged();
        assert_logged(log, "not swept");
}
END_TEST

/* A VM's disk that is an overlay on the old image (reuse_disk_on_change kept it) keeps that download when the spec
 * moves to another URL; a destroy, which removes the disk too, removes it. */
START_TEST(test_overlay_keeps_download) {
        Vm *isolated = manager_get_vm(manager, ROLE_ISOLATED);
        _cleanup_free_ char *a = NULL, *base = NULL, *log = NULL;
        Done d = {}, destroyed = {};
        HydraError err;
        VmOp *op = NULL;
        int r;

        register_spec(isolated, URL_A, NULL, &d);
        a = make_cached(URL_A, "image");
        ck_assert_int_ge(asprintf(&base, "%s/image", a), 0);
        write_overlay("state/isolated/disk.qcow2", base);

        register_spec(isolated, URL_B, NULL, &d);
        for (int i = 0; i < 100 && sd_event_run(event, 50 * 1000) > 0; i++)
                ;
        ck_assert(exists(a));

        r = vm_destroy(isolated, false, on_done, &destroyed, &op, &err);
        ck_assert_msg(r >= 0, "%s", err.message);
        run_until_gone(a);
        if (r == 0)
                run_until(&destroyed, 1);
        log = logged();
        assert_logged(log, "VM 'isolated': removed cached download ");
}
END_TEST

/* --- the CRI socket: bound while the spec has the forward to containerd, the VM down or not --- */

static unsigned fallback_served;

/* The daemon's top answers these over gRPC; here it only counts them. */
static int fallback_serve(int fd, void *userdata) {
        fallback_served++;
        safe_close(fd);
        return 0;
}

static const ProxyFallback test_fallback = { .serve = fallback_serve };

static void register_forward(Vm *vm, uint32_t guest_port, Done *d) {
        VmSpec spec = small_spec(1, NULL);
        HydraError err;
        VmOp *op = NULL;
        int calls = d->calls, r;

        if (guest_port > 0) {
                ck_assert_ptr_nonnull(spec.forwards = calloc(1, sizeof(PortForward)));
                /* A host port of each VM's own: RegisterVm refuses the other VM's. */
                spec.forwards[0] = (PortForward) { .host_port = vm_role(vm) == ROLE_HOST ? 40001 : 40000,
                                                   .guest_port = guest_port, .protocol = FORWARD_TCP };
                spec.n_forwards = 1;
        }
        hydra_error_clear(&err);
        r = vm_register(vm, &spec, false, on_done, d, &op, &err);
        vm_spec_done(&spec);
        ck_assert_msg(r == 0, "register: %d %s", r, err.message);
        run_until(d, calls + 1);
        ck_assert_msg(d->r == 1, "changed: %d %s", d->r, d->message);
}

static const char *cri_socket(Vm *vm) {
        VmStatus st;

        vm_get_status(vm, &st);
        return st.cri_socket;
}

/* Connects to path and runs the loop until the fallback has taken the connection. */
static void connect_to_fallback(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        unsigned before = fallback_served;
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        ck_assert_int_ge(fd, 0);
        ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
        strcpy(sa.sun_path, path);
        ck_assert_msg(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "connect %s: %m", path);
        for (int i = 0; i < 1000 && fallback_served == before; i++)
                ck_assert_int_ge(sd_event_run(event, 10 * 1000), 0);
        ck_assert_uint_eq(fallback_served, before + 1);
}

START_TEST(test_cri_socket_follows_spec) {
        Vm *isolated = manager_get_vm(manager, ROLE_ISOLATED), *host = manager_get_vm(manager, ROLE_HOST);
        _cleanup_free_ char *sock = at("run/isolated/containerd.sock"), *host_sock = at("run/host/containerd.sock");
        Done d = {}, destroyed = {};
        HydraError err;
        VmOp *op = NULL;
        struct stat st;
        int r;

        /* Registered, never started: the socket is there (its directory made for it), and the fallback answers. */
        vm_set_cri_fallback(isolated, &test_fallback);
        register_forward(isolated, SPEC_DEFAULT_CONTAINERD_PORT, &d);
        ck_assert_int_eq(lstat(sock, &st), 0);
        ck_assert(S_ISSOCK(st.st_mode));
        ck_assert_uint_eq(st.st_mode & 07777, 0660);
        ck_assert_str_eq(cri_socket(isolated), sock);
        connect_to_fallback(sock);

        /* The host VM has none, forward or not. */
        register_forward(host, SPEC_DEFAULT_CONTAINERD_PORT, &d);
        ck_assert_int_eq(access(host_sock, F_OK), -1);
        ck_assert_ptr_null(cri_socket(host));

        /* A spec without the forward: gone; with a forward to another guest port: still none. */
        register_forward(isolated, 0, &d);
        ck_assert_int_eq(access(sock, F_OK), -1);
        ck_assert_ptr_null(cri_socket(isolated));
        register_forward(isolated, 80, &d);
        ck_assert_int_eq(access(sock, F_OK), -1);
        register_forward(isolated, SPEC_DEFAULT_CONTAINERD_PORT, &d);
        ck_assert_int_eq(access(sock, F_OK), 0);
        connect_to_fallback(sock);

        /* Destroyed: gone with the VM. */
        hydra_error_clear(&err);
        r = vm_destroy(isolated, false, on_done, &destroyed, &op, &err);
        ck_assert_msg(r >= 0, "%s", err.message);
        if (r == 0)
                run_until(&destroyed, 1);
        ck_assert_int_eq(access(sock, F_OK), -1);
        ck_assert_ptr_null(cri_socket(isolated));
        vm_set_cri_fallback(isolated, NULL);
}
END_TEST

/* A restarted hydrad: the stored spec with the forward binds the socket at manager_load, before any start. */
START_TEST(test_cri_socket_at_load) {
        _cleanup_free_ char *sock = at("run/isolated/containerd.sock");
        HydraError err;

        make_dir("state");
        make_dir("state/isolated");
        write_file("state/isolated/spec.pb", "cpus=1 forward=35000", 0600);
        ck_assert_int_eq(access(sock, F_OK), -1);
        ck_assert_int_eq(load(&err), 0);
        ck_assert(vm_is_registered(manager_get_vm(manager, ROLE_ISOLATED)));
        ck_assert_int_eq(access(sock, F_OK), 0);
        vm_set_cri_fallback(manager_get_vm(manager, ROLE_ISOLATED), &test_fallback);
        connect_to_fallback(sock);
        vm_set_cri_fallback(manager_get_vm(manager, ROLE_ISOLATED), NULL);

        /* hydrad exits (the VMs may run on): the socket goes with it. */
        manager = manager_free(manager);
        ck_assert_int_eq(access(sock, F_OK), -1);
}
END_TEST

static VmStatus reason_status(VmState state, const char *last_error, const char *exit_reason, uint64_t next) {
        static VmExit exit;

        (void) snprintf(exit.reason, sizeof(exit.reason), "%s", strempty(exit_reason));
        return (VmStatus) { .name = "isolated", .registered = true, .state = state, .last_error = last_error,
                            .last_exit = &exit, .next_restart_usec = next };
}

static const char *reason(VmStatus st) {
        static char buf[512];

        vm_cri_unavailable_reason(&st, buf, sizeof(buf));
        return buf;
}

START_TEST(test_cri_unavailable_reason) {
        char long_error[400], expect[512], small[16];
        VmStatus st;

        ck_assert_str_eq(reason(reason_status(VM_STATE_STOPPED, NULL, "quit", 0)),
                         "VM 'isolated' is stopped: its containerd is not running (hydractl start isolated)");
        ck_assert_str_eq(reason(reason_status(VM_STATE_DEFINED, NULL, NULL, 0)),
                         "VM 'isolated' has not been started: its containerd is not running (hydractl start isolated)");
        ck_assert_str_eq(reason(reason_status(VM_STATE_PREPARING, NULL, NULL, 0)),
                         "VM 'isolated' is preparing: containerd is not ready yet");
        ck_assert_str_eq(reason(reason_status(VM_STATE_STARTING, NULL, NULL, 0)),
                         "VM 'isolated' is starting: containerd is not ready yet");
        ck_assert_str_eq(reason(reason_status(VM_STATE_STOPPING, NULL, NULL, 0)),
                         "VM 'isolated' is stopping: its containerd is going away");
        ck_assert_str_eq(reason(reason_status(VM_STATE_RUNNING, NULL, NULL, 0)),
                         "VM 'isolated' is running, but this connection was made while it was not: connect again");
        ck_assert_str_eq(reason(reason_status(VM_STATE_FAILED, "kernel '/x' is not readable: No such file", NULL, 0)),
                         "VM 'isolated' failed (kernel '/x' is not readable: No such file): its containerd is not "
                         "running (hydractl start isolated)");
        /* Crashed without an error: the exit's reason; a restart on its way: no command to suggest. */
        ck_assert_str_eq(reason(reason_status(VM_STATE_CRASHED, NULL, "guest-panic", 1700000000000000ULL)),
                         "VM 'isolated' crashed (guest-panic): its containerd is not running (a restart is scheduled)");
        ck_assert_str_eq(reason(reason_status(VM_STATE_CRASHED, NULL, NULL, 0)),
                         "VM 'isolated' crashed: its containerd is not running (hydractl start isolated)");

        /* The error briefly: its first line, at most VM_CRI_REASON_ERROR_MAX bytes, never half a character. */
        ck_assert_str_eq(reason(reason_status(VM_STATE_FAILED, "not ready after 60 s\nconsole: [FAILED] x", NULL, 0)),
                         "VM 'isolated' failed (not ready after 60 s...): its containerd is not running "
                         "(hydractl start isolated)");
        ck_assert_str_eq(reason(reason_status(VM_STATE_FAILED, "one line\n", NULL, 0)),
                         "VM 'isolated' failed (one line): its containerd is not running (hydractl start isolated)");
        memset(long_error, 'e', sizeof(long_error) - 1);
        long_error[sizeof(long_error) - 1] = 0;
        memcpy(long_error + VM_CRI_REASON_ERROR_MAX - 1, "\xc3\xa9", 2); /* a 2-byte character across the cut */
        (void) snprintf(expect, sizeof(expect), "VM 'isolated' failed (%.*s...): its containerd is not running "
                        "(hydractl start isolated)", (int) VM_CRI_REASON_ERROR_MAX - 1, long_error);
        ck_assert_str_eq(reason(reason_status(VM_STATE_FAILED, long_error, NULL, 0)), expect);

        st = reason_status(VM_STATE_STOPPED, NULL, NULL, 0);
        st.registered = false;
        ck_assert_str_eq(reason(st), "VM 'isolated' is not registered: it has no containerd "
                                     "(hydractl register isolated)");
        /* A small buffer: cut, terminated. */
        st = reason_status(VM_STATE_STOPPED, NULL, NULL, 0);
        vm_cri_unavailable_reason(&st, small, sizeof(small));
        ck_assert_str_eq(small, "VM 'isolated' i");
}
END_TEST

/* --- two VMs, one device: what RegisterVm checks across the two, the start of a VM whose dependency is not there,
 * the start order --- */

static VmSpec pair_spec(const char *start_after, const char *addr, uint32_t host_port) {
        VmSpec spec = small_spec(1, NULL);

        if (start_after)
                ck_assert_ptr_nonnull(spec.supervision.start_after = strdup(start_after));
        if (host_port > 0) {
                ck_assert_ptr_nonnull(spec.forwards = calloc(1, sizeof(PortForward)));
                spec.forwards[0] = (PortForward) { .host_addr = addr ? strdup(addr) : NULL, .host_port = host_port,
                                                   .guest_port = 35000 };
                spec.n_forwards = 1;
        }
        return spec;
}

/* Returns vm_register's result, once done when it was pending. */
static int register_pair(Role role, const char *start_after, const char *addr, uint32_t host_port, HydraError *err) {
        VmSpec spec = pair_spec(start_after, addr, host_port);
        Done d = {};
        VmOp *op = NULL;
        int r;

        hydra_error_clear(err);
        r = vm_register(manager_get_vm(manager, role), &spec, false, on_done, &d, &op, err);
        vm_spec_done(&spec);
        if (r == 0) {
                run_until(&d, 1);
                ck_assert_msg(d.r >= 0, "%s", d.message);
        }
        return r;
}

START_TEST(test_pair_forward_clash) {
        HydraError err;
        Role order[_ROLE_MAX];

        ck_assert_int_eq(register_pair(ROLE_HOST, NULL, "127.0.0.1", 35000, &err), 0);
        /* The wildcard collides with the host VM's 127.0.0.1:35000: refused, naming both roles and the port. */
        ck_assert_int_eq(register_pair(ROLE_ISOLATED, "host", "0.0.0.0", 35000, &err), -EINVAL);
        ck_assert_str_eq(err.message, "forwards[0].host_port: tcp 0.0.0.0:35000 of VM 'isolated' is also a host "
                                      "forward of VM 'host' (its forwards[0]: tcp 127.0.0.1:35000 to guest port "
                                      "35000): the two VMs cannot both bind host port 35000 (allowed: each host port "
                                      "in one VM only)");
        ck_assert(!vm_is_registered(manager_get_vm(manager, ROLE_ISOLATED)));
        /* Another port is fine, and so is the host VM registering its own spec again. */
        ck_assert_int_eq(register_pair(ROLE_ISOLATED, "host", NULL, 35001, &err), 0);
        ck_assert_int_eq(register_pair(ROLE_HOST, NULL, "127.0.0.1", 35000, &err), 1);
        ck_assert_int_eq(register_pair(ROLE_HOST, NULL, NULL, 35001, &err), -EINVAL);
        ck_assert_msg(strstr(err.message, "of VM 'host' is also a host forward of VM 'isolated'"), "%s", err.message);

        /* isolated starts after host: host first. */
        ck_assert_uint_eq(manager_start_order(manager, order), 2);
        ck_assert_int_eq(order[0], ROLE_HOST);
        ck_assert_int_eq(order[1], ROLE_ISOLATED);
}
END_TEST

START_TEST(test_pair_start_after_checks) {
        HydraError err;
        Role order[_ROLE_MAX];

        ck_assert_int_eq(register_pair(ROLE_ISOLATED, "isolated", NULL, 0, &err), -EINVAL);
        ck_assert_msg(strstr(err.message, "supervision.start_after: 'isolated' is this VM's own role"), "%s",
                      err.message);
        ck_assert_int_eq(register_pair(ROLE_HOST, "isolated", NULL, 0, &err), 0);
        ck_assert_uint_eq(manager_start_order(manager, order), 1);
        ck_assert_int_eq(order[0], ROLE_HOST);
        /* host starts after isolated: isolated starting after host would be a cycle. */
        ck_assert_int_eq(register_pair(ROLE_ISOLATED, "host", NULL, 0, &err), -EINVAL);
        ck_assert_str_eq(err.message, "supervision.start_after: 'isolated' starts after 'host', which starts after "
                                      "'isolated' (a cycle: allowed in one of the two specs only)");
        ck_assert_int_eq(register_pair(ROLE_ISOLATED, NULL, NULL, 0, &err), 0);
        ck_assert_uint_eq(manager_start_order(manager, order), 2);
        ck_assert_int_eq(order[0], ROLE_ISOLATED);
        ck_assert_int_eq(order[1], ROLE_HOST);
}
END_TEST

START_TEST(test_pair_dependency_not_registered) {
        ManagerOp *op = NULL;
        HydraError err;
        Done d = {};

        ck_assert_int_eq(register_pair(ROLE_ISOLATED, "host", NULL, 0, &err), 0);
        hydra_error_clear(&err);
        ck_assert_int_eq(manager_start(manager, ROLE_ISOLATED, false, 0, on_done, &d, &op, &err), HYDRA_EDEPENDENCY);
        ck_assert_ptr_null(op);
        ck_assert_str_eq(err.message, "VM 'isolated' starts after 'host' (supervision.start_after), which is not "
                                      "registered: register 'host' first, or 'isolated' without start_after");
        ck_assert_int_eq(d.calls, 0);
}
END_TEST

int main(void) {
        Suite *s = suite_create("manager");
        TCase *tc = tcase_create("load");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_load_nothing_stored);
        tcase_add_test(tc, test_load_spec_and_state);
        tcase_add_test(tc, test_corrupt_spec);
        tcase_add_test(tc, test_empty_spec);
        tcase_add_test(tc, test_invalid_spec);
        tcase_add_test(tc, test_spec_others_may_write);
        tcase_add_test(tc, test_corrupt_state_record);
        tcase_add_test(tc, test_state_dir_unusable);
        tcase_add_test(tc, test_lookup_and_settings);
        tcase_add_test(tc, test_register_async);
        tcase_add_test(tc, test_destroy_cancels_register);
        tcase_add_test(tc, test_reregister_drops_old_download);
        tcase_add_test(tc, test_overlay_keeps_download);
        tcase_add_test(tc, test_startup_sweep);
        tcase_add_test(tc, test_startup_sweep_unreadable_spec);
        tcase_add_test(tc, test_cri_socket_follows_spec);
        tcase_add_test(tc, test_cri_socket_at_load);
        tcase_add_test(tc, test_cri_unavailable_reason);
        tcase_add_test(tc, test_pair_forward_clash);
        tcase_add_test(tc, test_pair_start_after_checks);
        tcase_add_test(tc, test_pair_dependency_not_registered);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
