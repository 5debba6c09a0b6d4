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
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "macro.h"
#include "manager.h"
#include "vm.h"

static char tmpdir[] = "/tmp/test-manager-XXXXXX";
static HydraConfig config;
static sd_event *event;
static Manager *manager;
static char *log_path;
static int saved_stderr = -1;

static int decode(const void *data, size_t size, VmSpec *ret_spec, HydraError *err) {
        char buf[32];
        unsigned cpus;
        char extra;

        if (size >= sizeof(buf))
                return hydra_error_set(err, -EBADMSG, "not a VmSpec (too long)");
        memcpy(buf, data, size);
        buf[size] = '\0';
        if (sscanf(buf, "cpus=%u%c", &cpus, &extra) != 1)
                return hydra_error_set(err, -EBADMSG, "not a VmSpec");
        *ret_spec = (VmSpec) { .cpus = cpus, .memory_mib = 64 };
        return 0;
}

static int encode(const VmSpec *spec, void **ret_data, size_t *ret_size) {
        char *s;
        int n = asprintf(&s, "cpus=%u", spec->cpus);

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

int main(void) {
        Suite *s = suite_create("manager");
        TCase *tc = tcase_create("load");
        SRunner *sr;
        int failed;

        tcase_add_checked_fixture(tc, setup, teardown);
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
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
