/* SPDX-License-Identifier: MIT */
/* core/machine.c (issue 13): QEMU's scope and machined registration over sd-bus, against a private dbus-daemon
 * and a fake systemd-machined written with sd-bus that records the calls it gets, one line each. The fake runs in
 * a forked child; run as `test_machine fake-machined RECORD [--fail] [--exists N]` (with $DBUS_SYSTEM_BUS_ADDRESS)
 * it serves the integration test (tests/integration/test_machined.sh) too. The fallback without systemd is
 * tested on every host. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

#include "machine.h"
#include "macro.h"

#define RUN_BOUND_USEC (15ULL * 1000000ULL)

/* --- the fake machined --- */

typedef struct Fake {
        FILE *record;
        bool fail;          /* every CreateMachine: AccessDenied */
        unsigned exists;    /* the first N CreateMachine calls: MachineExists */
} Fake;

/* a(sv) as "Name=SIG:VALUE,..." for the basic types a scope property of ours can have. */
static int read_properties(sd_bus_message *m, char *buf, size_t size) {
        size_t len = 0;
        int r;

        buf[0] = '\0';
        r = sd_bus_message_enter_container(m, 'a', "(sv)");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(m, 'r', "sv")) > 0) {
                const char *name, *contents;
                char value[256] = "?";
                char type;

                r = sd_bus_message_read(m, "s", &name);
                if (r < 0)
                        return r;
                r = sd_bus_message_peek_type(m, &type, &contents);
                if (r < 0)
                        return r;
                r = sd_bus_message_enter_container(m, 'v', contents);
                if (r < 0)
                        return r;
                if (streq(contents, "t")) {
                        uint64_t t;
                        r = sd_bus_message_read(m, "t", &t);
                        (void) snprintf(value, sizeof(value), "%llu", (unsigned long long) t);
                } else if (streq(contents, "s")) {
                        const char *s;
                        r = sd_bus_message_read(m, "s", &s);
                        (void) snprintf(value, sizeof(value), "%s", s);
                } else if (streq(contents, "b")) {
                        int b;
                        r = sd_bus_message_read(m, "b", &b);
                        (void) snprintf(value, sizeof(value), "%s", b ? "true" : "false");
                } else if (streq(contents, "a(ss)")) {
                        /* DeviceAllow: "PATH ACCESS;..." */
                        const char *path, *access;
                        size_t n = 0;

                        value[0] = '\0';
                        r = sd_bus_message_enter_container(m, 'a', "(ss)");
                        while (r >= 0 && (r = sd_bus_message_read(m, "(ss)", &path, &access)) > 0)
                                n += (size_t) snprintf(value + n, n < sizeof(value) ? sizeof(value) - n : 0, "%s%s %s",
                                                       n ? ";" : "", path, access);
                        if (r >= 0)
                                r = sd_bus_message_exit_container(m);
                } else
                        r = sd_bus_message_skip(m, contents);
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(m);
                if (r >= 0)
                        r = sd_bus_message_exit_container(m);
                if (r < 0)
                        return r;
                len += (size_t) snprintf(buf + len, len < size ? size - len : 0, "%s%s=%s:%s", len ? "," : "", name,
                                         contents, value);
        }
        if (r < 0)
                return r;
        return sd_bus_message_exit_container(m);
}

/* CreateMachine(s name, ay id, s service, s class, u leader, s root_directory, a(sv) scope_properties) -> o */
static int fake_create_machine(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *name, *service, *class, *root;
        Fake *f = userdata;
        const void *id;
        char props[1024];
        uint32_t leader;
        size_t id_len;
        int r;

        r = sd_bus_message_read(m, "s", &name);
        if (r >= 0)
                r = sd_bus_message_read_array(m, 'y', &id, &id_len);
        if (r >= 0)
                r = sd_bus_message_read(m, "ssus", &service, &class, &leader, &root);
        if (r >= 0)
                r = read_properties(m, props, sizeof(props));
        if (r < 0)
                return r;
        fprintf(f->record, "CreateMachine name=%s id_len=%zu service=%s class=%s leader=%u root=%s props=%s\n", name,
                id_len, service, class, leader, root, props);
        fflush(f->record);

        if (f->exists > 0) {
                f->exists--;
                return sd_bus_reply_method_errorf(m, "org.freedesktop.machine1.MachineExists",
                                                  "Machine '%s' already exists", name);
        }
        if (f->fail)
                return sd_bus_reply_method_errorf(m, SD_BUS_ERROR_ACCESS_DENIED, "the fake machined refuses '%s'",
                                                  name);
        return sd_bus_reply_method_return(m, "o", "/org/freedesktop/machine1/machine/fake");
}

static const sd_bus_vtable fake_machined_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("CreateMachine", "sayssusa(sv)", "o", fake_create_machine, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END,
};

/* Serves org.freedesktop.machine1 on address until killed; writes "ready\n" to ready_fd once it owns the name. */
static int fake_machined_run(const char *address, const char *record_path, bool fail, unsigned exists, int ready_fd) {
        _cleanup_(sd_bus_flush_close_unrefp) sd_bus *bus = NULL;
        Fake f = { .fail = fail, .exists = exists };
        int r;

        f.record = fopen(record_path, "ae");
        if (!f.record)
                return -errno;
        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r >= 0)
                r = sd_bus_add_object_vtable(bus, NULL, "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                                             fake_machined_vtable, &f);
        if (r >= 0)
                r = sd_bus_request_name(bus, "org.freedesktop.machine1", 0);
        if (r < 0) {
                fprintf(stderr, "fake machined on '%s': %s\n", address, strerror(-r));
                return r;
        }
        if (write(ready_fd, "ready\n", 6) != 6)
                return -errno;
        for (;;) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        return r;
                if (r > 0)
                        continue;
                r = sd_bus_wait(bus, UINT64_MAX);
                if (r < 0 && r != -EINTR)
                        return r;
        }
}

/* --- a private bus --- */

static char tmpdir[] = "/tmp/test-machine.XXXXXX";
static char address[PATH_MAX + 64];
static char record_path[PATH_MAX];
static pid_t bus_pid, fake_pid, vm_pid;

static void write_file(const char *path, const char *text) {
        FILE *f = fopen(path, "we");

        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(text, f), 0);
        ck_assert_int_eq(fclose(f), 0);
}

/* Reads one line from fd (a child's readiness), at most 10 s. */
static void wait_line(int fd, char *buf, size_t size) {
        size_t n = 0;

        ck_assert_int_eq(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
        for (int i = 0; i < 1000 && (n == 0 || buf[n - 1] != '\n'); i++) {
                ssize_t k = read(fd, buf + n, size - 1 - n);
                if (k > 0)
                        n += (size_t) k;
                else if (k == 0)
                        break;
                else
                        usleep(10000);
        }
        buf[n] = '\0';
        ck_assert_msg(n > 0 && buf[n - 1] == '\n', "no line from the child (got '%s')", buf);
        buf[n - 1] = '\0';
}

/* dbus-daemon with a configuration that lets anyone own any name and call anything. */
static void start_bus(void) {
        char config[PATH_MAX], text[2048], line[PATH_MAX + 32];
        int p[2];

        if (access("/usr/bin/dbus-daemon", X_OK) < 0)
                return;
        (void) snprintf(config, sizeof(config), "%s/bus.conf", tmpdir);
        (void) snprintf(text, sizeof(text),
                        "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\"\n"
                        " \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n"
                        "<busconfig>\n"
                        "  <type>custom</type>\n"
                        "  <listen>unix:path=%s/bus</listen>\n"
                        "  <auth>EXTERNAL</auth>\n"
                        "  <policy context=\"default\">\n"
                        "    <allow user=\"*\"/>\n"
                        "    <allow own=\"*\"/>\n"
                        "    <allow send_destination=\"*\"/>\n"
                        "    <allow receive_sender=\"*\"/>\n"
                        "  </policy>\n"
                        "</busconfig>\n",
                        tmpdir);
        write_file(config, text);
        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        bus_pid = fork();
        ck_assert_int_ge(bus_pid, 0);
        if (bus_pid == 0) {
                char fd_arg[32];

                char log[PATH_MAX + 16];
                int lfd;

                (void) snprintf(log, sizeof(log), "%s/dbus-daemon.log", tmpdir);
                lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (lfd >= 0)
                        (void) dup2(lfd, STDERR_FILENO);
                (void) dup2(p[1], 3);
                (void) snprintf(fd_arg, sizeof(fd_arg), "--print-address=3");
                execl("/usr/bin/dbus-daemon", "dbus-daemon", "--nofork", "--nopidfile", fd_arg, "--config-file",
                      config, (char *) NULL);
                _exit(127);
        }
        close(p[1]);
        wait_line(p[0], line, sizeof(line));
        close(p[0]);
        ck_assert_uint_lt(strlen(line), sizeof(address));
        strcpy(address, line);
        ck_assert_msg(strncmp(address, "unix:path=", 10) == 0, "dbus-daemon printed '%s'", address);
}

static void start_fake(bool fail, unsigned exists) {
        char line[64];
        int p[2];

        ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
        fake_pid = fork();
        ck_assert_int_ge(fake_pid, 0);
        if (fake_pid == 0) {
                close(p[0]);
                _exit(fake_machined_run(address, record_path, fail, exists, p[1]) < 0 ? 1 : 0);
        }
        close(p[1]);
        wait_line(p[0], line, sizeof(line));
        close(p[0]);
        ck_assert_str_eq(line, "ready");
}

/* What stands for QEMU: a child that waits to be killed. */
static pid_t start_vm(void) {
        pid_t pid = fork();

        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                for (;;)
                        pause();
        }
        return pid;
}

/* The common start of a bus case: the stand-in QEMU, hydrad's side connected to the private bus (machined = yes). */
static Machined *connect_machined(sd_event **e) {
        HydraError why = {};
        Machined *m = NULL;

        vm_pid = start_vm();
        ck_assert_int_eq(setenv("DBUS_SYSTEM_BUS_ADDRESS", address, 1), 0);
        ck_assert_int_eq(sd_event_new(e), 0);
        ck_assert_int_eq(machined_new(*e, MACHINED_YES, &m, &why), 1);
        ck_assert_ptr_nonnull(m);
        return m;
}

/* The "VM" was left alone: not killed, not stopped, still ours. */
static void assert_vm_unharmed(pid_t pid) {
        int status;

        ck_assert_int_eq(waitpid(pid, &status, WNOHANG), 0);
        ck_assert_int_eq(kill(pid, 0), 0);
}

static void stop_child(pid_t *pid) {
        if (*pid <= 0)
                return;
        (void) kill(*pid, SIGKILL);
        (void) waitpid(*pid, NULL, 0);
        *pid = 0;
}

static void setup(void) {
        ck_assert_ptr_nonnull(mkdtemp(tmpdir));
        (void) snprintf(record_path, sizeof(record_path), "%s/calls", tmpdir);
        start_bus();
}

static void teardown(void) {
        char cmd[PATH_MAX + 16];

        stop_child(&vm_pid);
        stop_child(&fake_pid);
        stop_child(&bus_pid);
        (void) snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        (void) system(cmd);
}

#define REQUIRE_BUS()                                                                          \
        do {                                                                                   \
                if (bus_pid <= 0) {                                                            \
                        fprintf(stderr, "SKIP: /usr/bin/dbus-daemon is not installed\n");      \
                        return;                                                                \
                }                                                                              \
        } while (0)

/* The calls the fake recorded, as one string. */
static char *read_record(void) {
        static char buf[8192];
        int fd = open(record_path, O_RDONLY | O_CLOEXEC);
        ssize_t n = 0;

        if (fd >= 0) {
                n = read(fd, buf, sizeof(buf) - 1);
                close(fd);
        }
        buf[n > 0 ? n : 0] = '\0';
        return buf;
}

/* --- driving the module --- */

typedef struct Result {
        bool done;
        int r;
        char path[256];
        HydraError err;
        unsigned calls;
} Result;

static void on_done(MachineJob *j, int r, const char *path, const HydraError *err, void *userdata) {
        Result *res = userdata;

        res->calls++;
        res->done = true;
        res->r = r;
        if (path)
                (void) snprintf(res->path, sizeof(res->path), "%s", path);
        if (err)
                res->err = *err;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void run_until(sd_event *e, const bool *flag) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (!*flag) {
                ck_assert_msg(now_usec() < deadline, "the loop did not get there in time");
                ck_assert_int_ge(sd_event_run(e, 100000), 0);
        }
}

/* Registers name for vm_pid with props; returns what done said. */
static Result register_vm(sd_event *e, Machined *m, const char *name, const MachineProperties *props) {
        Result res = {};
        MachineJob *j = NULL;
        HydraError err = {};

        ck_assert_msg(machine_register(m, name, vm_pid, props, on_done, &res, &j, &err) == 0, "%s", err.message);
        run_until(e, &res.done);
        /* A little longer: done comes once. */
        for (int i = 0; i < 5; i++)
                ck_assert_int_ge(sd_event_run(e, 20000), 0);
        ck_assert_uint_eq(res.calls, 1);
        machine_job_free(j);
        return res;
}

START_TEST(test_cpu_quota_and_scope_name) {
        _cleanup_free_ char *a = machine_scope_name("hydra-isolated"), *b = machine_scope_name("hydra-host"),
                            *c = machine_scope_name(".x/y z");

        /* systemd's CPUQuota=150% is CPUQuotaPerSecUSec 1.5 s per second. */
        ck_assert_uint_eq(machine_cpu_quota_usec(150), 1500000);
        ck_assert_uint_eq(machine_cpu_quota_usec(100), 1000000);
        ck_assert_uint_eq(machine_cpu_quota_usec(0), 0);
        /* What `systemd-escape hydra-isolated` prints, in machined's machine-NAME.scope. */
        ck_assert_str_eq(a, "machine-hydra\\x2disolated.scope");
        ck_assert_str_eq(b, "machine-hydra\\x2dhost.scope");
        ck_assert_str_eq(c, "machine-\\x2ex-y\\x20z.scope");
}
END_TEST

/* The scope's device list for a spec without devices.gpu, as the fake records it: hydrad.service's DevicePolicy= and
 * DeviceAllow= lines but char-drm (which the scope of a spec with devices.gpu gets too). */
#define DEVICES                                                                                                \
        "DevicePolicy=s:closed,DeviceAllow=a(ss):/dev/kvm rw;/dev/net/tun rw;/dev/vhost-net rw;/dev/vhost-vsock rw"

/* The scope's list is the unit's: DEVICES above against systemd/hydrad.service.in's DevicePolicy= and DeviceAllow=. */
START_TEST(test_device_list_is_the_units) {
        char line[512], unit[4096] = "";
        size_t n = 0;
        FILE *f = fopen(TEST_DATA_DIR "/../../systemd/hydrad.service.in", "re");

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f)) {
                line[strcspn(line, "\n")] = '\0';
                if (strncmp(line, "DevicePolicy=", 13) == 0)
                        n += (size_t) snprintf(unit + n, sizeof(unit) - n, "DevicePolicy=s:%s,DeviceAllow=a(ss):",
                                               line + 13);
                else if (strncmp(line, "DeviceAllow=", 12) == 0)
                        n += (size_t) snprintf(unit + n, sizeof(unit) - n, "%s%s",
                                               n == 0 || unit[n - 1] == ':' ? "" : ";", line + 12);
                ck_assert_uint_lt(n, sizeof(unit));
        }
        fclose(f);
        ck_assert_str_eq(unit, DEVICES ";char-drm rw"); /* the scope of a spec with devices.gpu */
}
END_TEST

START_TEST(test_create_machine_arguments) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = NULL;
        HydraError why = {};
        char expected[1024];
        Result res;

        REQUIRE_BUS();
        start_fake(false, 0);
        m = connect_machined(&e);
        ck_assert_msg(why.code == 0, "%s", why.message);

        res = register_vm(e, m, "hydra-isolated",
                          &(MachineProperties) { .cpu_quota_per_sec_usec = machine_cpu_quota_usec(150),
                                             .memory_max = UINT64_C(512) * 1024 * 1024 });
        ck_assert_msg(res.r == 0, "%s", res.err.message);
        ck_assert_str_eq(res.path, "/org/freedesktop/machine1/machine/fake");
        (void) snprintf(expected, sizeof(expected),
                        "CreateMachine name=hydra-isolated id_len=0 service=hydra class=vm leader=%d root= "
                        "props=CPUQuotaPerSecUSec=t:1500000,MemoryMax=t:536870912," DEVICES "\n", (int) vm_pid);
        ck_assert_str_eq(read_record(), expected);

        /* Without limits: only the device list (machined adds its own: slice, delegation, collection). */
        ck_assert_int_eq(truncate(record_path, 0), 0);
        res = register_vm(e, m, "hydra-host", &(MachineProperties) {});
        ck_assert_msg(res.r == 0, "%s", res.err.message);
        (void) snprintf(expected, sizeof(expected),
                        "CreateMachine name=hydra-host id_len=0 service=hydra class=vm leader=%d root= props=" DEVICES
                        "\n", (int) vm_pid);
        ck_assert_str_eq(read_record(), expected);

        /* NULL: the same. */
        ck_assert_int_eq(truncate(record_path, 0), 0);
        res = register_vm(e, m, "hydra-host", NULL);
        ck_assert_msg(res.r == 0, "%s", res.err.message);
        ck_assert_str_eq(read_record(), expected);

        /* devices.gpu: the DRM class too (virtio-gpu-gl's render node). */
        ck_assert_int_eq(truncate(record_path, 0), 0);
        res = register_vm(e, m, "hydra-host", &(MachineProperties) { .memory_max = UINT64_C(1) << 30, .gpu = true });
        ck_assert_msg(res.r == 0, "%s", res.err.message);
        (void) snprintf(expected, sizeof(expected),
                        "CreateMachine name=hydra-host id_len=0 service=hydra class=vm leader=%d root= "
                        "props=MemoryMax=t:1073741824," DEVICES ";char-drm rw\n", (int) vm_pid);
        ck_assert_str_eq(read_record(), expected);
        assert_vm_unharmed(vm_pid);
        machined_free(m);
}
END_TEST

/* machined refuses: the job fails naming the call, the D-Bus error and its message; the VM runs on. */
START_TEST(test_create_machine_refused) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = NULL;
        Result res;

        REQUIRE_BUS();
        start_fake(true, 0);
        m = connect_machined(&e);

        res = register_vm(e, m, "hydra-isolated", &(MachineProperties) { .memory_max = UINT64_C(1) << 30 });
        ck_assert_int_eq(res.r, -EACCES);
        ck_assert_int_eq(res.err.code, -EACCES);
        ck_assert_msg(strstr(res.err.message, "CreateMachine('hydra-isolated'") &&
                      strstr(res.err.message, "org.freedesktop.DBus.Error.AccessDenied: the fake machined refuses "
                             "'hydra-isolated'"), "%s", res.err.message);
        ck_assert_ptr_nonnull(strstr(read_record(), "CreateMachine name=hydra-isolated"));
        assert_vm_unharmed(vm_pid);
        machined_free(m);
}
END_TEST

/* A bus without machined: the bus's own error, the VM runs on. */
START_TEST(test_machined_absent) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = NULL;
        Result res;

        REQUIRE_BUS();
        m = connect_machined(&e);

        res = register_vm(e, m, "hydra-host", NULL);
        ck_assert_int_lt(res.r, 0);
        ck_assert_msg(strstr(res.err.message, "org.freedesktop.DBus.Error.ServiceUnknown"), "%s", res.err.message);
        assert_vm_unharmed(vm_pid);
        machined_free(m);
}
END_TEST

/* The name is still machined's from the QEMU that just exited: asked again, then registered. */
START_TEST(test_machine_exists_retried) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = NULL;
        const char *rec, *p;
        unsigned lines = 0;
        Result res;

        REQUIRE_BUS();
        start_fake(false, 2);
        m = connect_machined(&e);

        res = register_vm(e, m, "hydra-isolated", NULL);
        ck_assert_msg(res.r == 0, "%s", res.err.message);
        rec = read_record();
        for (p = rec; (p = strstr(p, "CreateMachine name=hydra-isolated")); p++)
                lines++;
        ck_assert_uint_eq(lines, 3);
        machined_free(m);
}
END_TEST

/* A job freed before machined answers: done is never called (the VM's QEMU exited meanwhile). */
START_TEST(test_cancel) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = NULL;
        MachineJob *j = NULL;
        HydraError err = {};
        Result res = {};

        REQUIRE_BUS();
        start_fake(false, 0);
        m = connect_machined(&e);
        ck_assert_int_eq(machine_register(m, "hydra-isolated", vm_pid, NULL, on_done, &res, &j, &err), 0);
        machine_job_free(j);
        for (int i = 0; i < 20; i++)
                ck_assert_int_ge(sd_event_run(e, 20000), 0);
        ck_assert_uint_eq(res.calls, 0);
        /* A job left pending when the Machined goes is cancelled with it. */
        ck_assert_int_eq(machine_register(m, "hydra-host", vm_pid, NULL, on_done, &res, &j, &err), 0);
        machined_free(m);
        ck_assert_uint_eq(res.calls, 0);
}
END_TEST

/* No bus at all. yes: the object exists, why says so, and a registration fails at once (nothing pending). auto:
 * hydrad does without. no: never. */
START_TEST(test_no_bus) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        char nowhere[PATH_MAX + 16];
        Machined *m = NULL;
        MachineJob *j = NULL;
        HydraError why = {}, err = {};
        Result res = {};

        vm_pid = start_vm();
        (void) snprintf(nowhere, sizeof(nowhere), "unix:path=%s/no-bus-here", tmpdir);
        ck_assert_int_eq(setenv("DBUS_SYSTEM_BUS_ADDRESS", nowhere, 1), 0);
        ck_assert_int_eq(sd_event_new(&e), 0);

        ck_assert_int_eq(machined_new(e, MACHINED_YES, &m, &why), 1);
        ck_assert_ptr_nonnull(m);
        ck_assert_int_lt(why.code, 0);
        ck_assert_msg(strstr(why.message, "cannot connect to the system bus") && strstr(why.message, nowhere),
                      "%s", why.message);
        ck_assert_int_lt(machine_register(m, "hydra-isolated", vm_pid, NULL, on_done, &res, &j, &err), 0);
        ck_assert_ptr_null(j);
        ck_assert_msg(strstr(err.message, "cannot connect to the system bus"), "%s", err.message);
        for (int i = 0; i < 5; i++)
                ck_assert_int_ge(sd_event_run(e, 10000), 0);
        ck_assert_uint_eq(res.calls, 0);
        assert_vm_unharmed(vm_pid);
        m = machined_free(m);

        /* auto on a host with systemd as PID 1 but no reachable bus: without. */
        ck_assert_int_eq(machined_new_full(e, MACHINED_AUTO, 1, &m, &why), 0);
        ck_assert_ptr_null(m);
        ck_assert_msg(strstr(why.message, "cannot connect to the system bus"), "%s", why.message);

        ck_assert_int_eq(machined_new(e, MACHINED_NO, &m, &why), 0);
        ck_assert_ptr_null(m);
        ck_assert_str_eq(why.message, "machined = no");
}
END_TEST

/* auto without systemd as PID 1: no bus is even tried (a bus is there and would answer). On every host. */
START_TEST(test_fallback_without_systemd) {
        _cleanup_(sd_event_unrefp) sd_event *e = NULL;
        Machined *m = (Machined *) 1;
        HydraError why = {};

        if (bus_pid > 0)
                ck_assert_int_eq(setenv("DBUS_SYSTEM_BUS_ADDRESS", address, 1), 0);
        ck_assert_int_eq(sd_event_new(&e), 0);
        ck_assert_int_eq(machined_new_full(e, MACHINED_AUTO, 0, &m, &why), 0);
        ck_assert_ptr_null(m);
        ck_assert_str_eq(why.message, "systemd is not PID 1");

        /* This host as it is: the same answer where systemd is not PID 1. */
        if (access("/run/systemd/system", F_OK) < 0) {
                ck_assert_int_eq(machined_new(e, MACHINED_AUTO, &m, &why), 0);
                ck_assert_ptr_null(m);
                ck_assert_str_eq(why.message, "systemd is not PID 1");
        }
}
END_TEST

/* Adoption finds a QEMU's scope in /proc/PID/cgroup: this process's own cgroup stands for one. */
START_TEST(test_pid_in_scope) {
        char line[PATH_MAX], *last = NULL;
        FILE *f = fopen("/proc/self/cgroup", "re");

        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "0::/", 4) == 0) {
                        line[strcspn(line, "\n")] = '\0';
                        last = strrchr(line, '/') + 1;
                        break;
                }
        fclose(f);
        static const char scope[] = "machine-hydra\\x2disolated.scope";

        ck_assert(machine_cgroup_has_scope("0::/machine.slice/machine-hydra\\x2disolated.scope\n", scope));
        ck_assert(machine_cgroup_has_scope("0::/machine.slice/machine-hydra\\x2disolated.scope/payload\n", scope));
        ck_assert(machine_cgroup_has_scope("1:name=systemd:/machine.slice/machine-hydra\\x2disolated.scope", scope));
        ck_assert(!machine_cgroup_has_scope("0::/system.slice/hydrad.service\n", scope));
        ck_assert(!machine_cgroup_has_scope("0::/machine.slice/machine-hydra\\x2disolated.scope2\n", scope));
        ck_assert(!machine_cgroup_has_scope("0::/machine.slice/xmachine-hydra\\x2disolated.scope\n", scope));
        ck_assert(!machine_cgroup_has_scope("4:memory:/machine.slice/machine-hydra\\x2disolated.scope\n", scope));
        ck_assert_int_eq(machine_pid_in_scope(getpid(), "machine-hydra\\x2dnone.scope"), 0);
        ck_assert_int_lt(machine_pid_in_scope(INT_MAX, "machine-hydra\\x2dnone.scope"), 0);
        if (last && *last) {
                char prefix[PATH_MAX];

                ck_assert_int_eq(machine_pid_in_scope(getpid(), last), 1);
                /* A part of the name is not the name. */
                (void) snprintf(prefix, sizeof(prefix), "%.*s", (int) strlen(last) - 1, last);
                if (*prefix)
                        ck_assert_int_eq(machine_pid_in_scope(getpid(), prefix), 0);
        }
}
END_TEST

/* hydrad.conf's machined = auto|yes|no (its own block of config.c). */
START_TEST(test_config_machined) {
        HydraConfig c;
        HydraError err = {};

        config_init(&c);
        ck_assert_int_eq(c.machined, MACHINED_AUTO);
        ck_assert_int_eq(config_set(&c, "machined", "yes", &err), 0);
        ck_assert_int_eq(c.machined, MACHINED_YES);
        ck_assert_int_eq(config_set(&c, "machined", "no", &err), 0);
        ck_assert_int_eq(c.machined, MACHINED_NO);
        ck_assert_int_eq(config_set(&c, "machined", "auto", &err), 0);
        ck_assert_int_eq(c.machined, MACHINED_AUTO);
        ck_assert_int_eq(config_set(&c, "machined", "maybe", &err), -EINVAL);
        ck_assert_str_eq(err.message, "machined: 'maybe' is not allowed (allowed: auto, yes, no)");
        ck_assert_int_eq(c.machined, MACHINED_AUTO);
        config_done(&c);
}
END_TEST

static Suite *machine_suite(void) {
        Suite *s = suite_create("machine");
        TCase *tc;

        tc = tcase_create("machine");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, test_config_machined);
        tcase_add_test(tc, test_pid_in_scope);
        tcase_add_test(tc, test_cpu_quota_and_scope_name);
        tcase_add_test(tc, test_device_list_is_the_units);
        tcase_add_test(tc, test_create_machine_arguments);
        tcase_add_test(tc, test_create_machine_refused);
        tcase_add_test(tc, test_machined_absent);
        tcase_add_test(tc, test_machine_exists_retried);
        tcase_add_test(tc, test_cancel);
        tcase_add_test(tc, test_no_bus);
        tcase_add_test(tc, test_fallback_without_systemd);
        suite_add_tcase(s, tc);
        return s;
}

int main(int argc, char **argv) {
        SRunner *sr;
        int failed;

        /* The fake alone, for the integration test: test_machine fake-machined RECORD [--fail] [--exists N]. */
        if (argc >= 3 && streq(argv[1], "fake-machined")) {
                const char *a = getenv("DBUS_SYSTEM_BUS_ADDRESS");
                bool fail = false;
                unsigned exists = 0;

                for (int i = 3; i < argc; i++)
                        if (streq(argv[i], "--fail"))
                                fail = true;
                        else if (streq(argv[i], "--exists") && i + 1 < argc)
                                exists = (unsigned) strtoul(argv[++i], NULL, 10);
                if (!a) {
                        fprintf(stderr, "fake-machined: $DBUS_SYSTEM_BUS_ADDRESS is not set\n");
                        return 2;
                }
                return fake_machined_run(a, argv[2], fail, exists, STDOUT_FILENO) < 0 ? 1 : 0;
        }

        sr = srunner_create(machine_suite());
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? 0 : 1;
}
