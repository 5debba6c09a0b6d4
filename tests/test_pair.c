/* SPDX-License-Identifier: MIT */
/* Two VMs, one device: the pure parts. start_order() (the order of start --all, autostart and the stop at exit),
 * supervision.start_after's checks, the host forwards of two specs that collide, and QEMU's "Could not set up host
 * forwarding rule" said as a person reads it. */
#include <check.h>
#include <string.h>

#include "macro.h"
#include "qemu_argv.h"
#include "spec.h"
#include "start_order.h"

START_TEST(test_order_independent) {
        int after[] = { -1, -1, -1 };
        size_t order[3];

        ck_assert_int_eq(start_order(after, 3, order), 0);
        for (size_t i = 0; i < 3; i++)
                ck_assert_uint_eq(order[i], i); /* nothing to reorder: index order */
        ck_assert_int_eq(start_order(after, 0, order), 0);
}
END_TEST

START_TEST(test_order_dependency_first) {
        /* host = 0, isolated = 1 starts after host; and the reverse roles */
        int after[] = { -1, 0 }, reverse[] = { 1, -1 };
        int chain[] = { 2, -1, 1, 0 }; /* 1 first, then 2, then 0, then 3 */
        size_t order[4];

        ck_assert_int_eq(start_order(after, 2, order), 0);
        ck_assert_uint_eq(order[0], 0);
        ck_assert_uint_eq(order[1], 1);
        ck_assert_int_eq(start_order(reverse, 2, order), 0);
        ck_assert_uint_eq(order[0], 1);
        ck_assert_uint_eq(order[1], 0);
        ck_assert_int_eq(start_order(chain, 4, order), 0);
        ck_assert_uint_eq(order[0], 1);
        ck_assert_uint_eq(order[1], 2);
        ck_assert_uint_eq(order[2], 0);
        ck_assert_uint_eq(order[3], 3);
}
END_TEST

START_TEST(test_order_cycle_and_range) {
        int cycle[] = { 1, 0 }, self[] = { -1, 1 }, out_of_range[] = { 2, -1 }, below[] = { -2, -1 };
        size_t order[2];

        ck_assert_int_eq(start_order(cycle, 2, order), -ELOOP);
        ck_assert_int_eq(start_order(self, 2, order), -ELOOP);
        ck_assert_int_eq(start_order(out_of_range, 2, order), -EINVAL);
        ck_assert_int_eq(start_order(below, 2, order), -EINVAL);
}
END_TEST

static VmSpec spec_after(const char *after) {
        VmSpec s = { .cpus = 1, .memory_mib = 64 };

        if (after)
                ck_assert_ptr_nonnull(s.supervision.start_after = strdup(after));
        ck_assert_int_eq(vm_spec_apply_defaults(&s), 0);
        return s;
}

START_TEST(test_start_after_validation) {
        _cleanup_(vm_spec_done) VmSpec none = spec_after(NULL), host = spec_after("host"),
                                       bogus = spec_after("xen"), empty = spec_after("");
        HydraError err;

        hydra_error_clear(&err);
        ck_assert_int_eq(vm_spec_validate(&none, &err), 0);
        ck_assert_int_eq(vm_spec_start_after(&none), _ROLE_INVALID);
        ck_assert_int_eq(vm_spec_validate(&host, &err), 0);
        ck_assert_int_eq(vm_spec_start_after(&host), ROLE_HOST);
        ck_assert_ptr_null(empty.supervision.start_after); /* empty is none, as every string of the spec */
        ck_assert_int_eq(vm_spec_start_after(&empty), _ROLE_INVALID);

        ck_assert_int_eq(vm_spec_validate(&bogus, &err), -EINVAL);
        ck_assert_msg(strstr(err.message, "supervision.start_after: 'xen' is not a role (allowed: host, isolated"),
                      "%s", err.message);

        /* The other role only, never its own. */
        ck_assert_int_eq(vm_spec_validate_role(&host, ROLE_ISOLATED, &err), 0);
        ck_assert_int_eq(vm_spec_validate_role(&none, ROLE_HOST, &err), 0);
        ck_assert_int_eq(vm_spec_validate_role(&host, ROLE_HOST, &err), -EINVAL);
        ck_assert_str_eq(err.message, "supervision.start_after: 'host' is this VM's own role (allowed: the other VM, "
                                      "isolated, or empty for none)");
}
END_TEST

static void add_forward(VmSpec *s, const char *addr, uint32_t host_port, uint32_t guest_port, ForwardProtocol p) {
        PortForward *f = reallocarray(s->forwards, s->n_forwards + 1, sizeof(PortForward));

        ck_assert_ptr_nonnull(f);
        s->forwards = f;
        f[s->n_forwards++] = (PortForward) { .host_addr = addr ? strdup(addr) : NULL, .host_port = host_port,
                                             .guest_port = guest_port, .protocol = p };
}

START_TEST(test_forwards_clash) {
        _cleanup_(vm_spec_done) VmSpec a = {}, b = {};
        size_t j = 99;

        add_forward(&a, NULL, 5555, 22, FORWARD_TCP);
        add_forward(&a, "127.0.0.1", 35000, 35000, FORWARD_TCP);
        add_forward(&b, "127.0.0.1", 5556, 22, FORWARD_TCP);
        ck_assert_int_eq(vm_spec_forwards_clash(&a, &b, &j), -ENOENT);
        ck_assert_int_eq(vm_spec_forwards_clash(&a, &(VmSpec) {}, &j), -ENOENT);

        /* The same port over UDP, or on another address: no clash. */
        add_forward(&b, "127.0.0.1", 35000, 35000, FORWARD_UDP);
        add_forward(&b, "10.1.2.3", 35000, 35000, FORWARD_TCP);
        ck_assert_int_eq(vm_spec_forwards_clash(&a, &b, &j), -ENOENT);

        /* The wildcard binds every address: it collides with 127.0.0.1 (an empty address is 127.0.0.1). */
        add_forward(&b, "0.0.0.0", 5555, 2222, FORWARD_TCP);
        ck_assert_int_eq(vm_spec_forwards_clash(&a, &b, &j), 0);
        ck_assert_uint_eq(j, 3);
        ck_assert_int_eq(vm_spec_forwards_clash(&b, &a, &j), 3);
        ck_assert_uint_eq(j, 0);
}
END_TEST

START_TEST(test_forwards_clash_same_address) {
        _cleanup_(vm_spec_done) VmSpec a = {}, b = {};
        size_t j;

        add_forward(&a, "127.0.0.1", 35000, 35000, FORWARD_TCP);
        add_forward(&b, NULL, 6443, 6443, FORWARD_TCP);
        add_forward(&b, NULL, 35000, 8000, FORWARD_TCP); /* the guest port does not matter */
        ck_assert_int_eq(vm_spec_forwards_clash(&a, &b, &j), 0);
        ck_assert_uint_eq(j, 1);
}
END_TEST

START_TEST(test_hostfwd_error) {
        char buf[256] = "untouched";

        /* QEMU 8/9 (net/slirp.c), and with the reason some versions add */
        ck_assert_int_eq(qemu_hostfwd_error("qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:35000-:"
                                            "35000: Could not set up host forwarding rule 'tcp:127.0.0.1:35000-:35000'",
                                            buf, sizeof(buf)), 1);
        ck_assert_str_eq(buf, "host port 127.0.0.1:35000 (forward to guest port 35000) is in use by another process");
        ck_assert_int_eq(qemu_hostfwd_error("x: Could not set up host forwarding rule 'udp:0.0.0.0:5353-10.0.2.15:53':"
                                            " Address already in use", buf, sizeof(buf)), 1);
        ck_assert_str_eq(buf, "host port 0.0.0.0:5353/udp (forward to guest port 53) is in use by another process");

        strcpy(buf, "untouched");
        ck_assert_int_eq(qemu_hostfwd_error("qemu: could not load kernel '/nope'", buf, sizeof(buf)), 0);
        ck_assert_int_eq(qemu_hostfwd_error("Could not set up host forwarding rule 'tcp:127.0.0.1:35000", buf,
                                            sizeof(buf)), 0);
        ck_assert_int_eq(qemu_hostfwd_error("Could not set up host forwarding rule 'garbage'", buf, sizeof(buf)), 0);
        ck_assert_int_eq(qemu_hostfwd_error(NULL, buf, sizeof(buf)), 0);
        ck_assert_str_eq(buf, "untouched");

        /* Truncated, not overrun. */
        ck_assert_int_eq(qemu_hostfwd_error("Could not set up host forwarding rule 'tcp:127.0.0.1:1-:2'", buf, 10), 1);
        ck_assert_str_eq(buf, "host port");
}
END_TEST

int main(void) {
        Suite *s = suite_create("pair");
        TCase *tc = tcase_create("pure");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_order_independent);
        tcase_add_test(tc, test_order_dependency_first);
        tcase_add_test(tc, test_order_cycle_and_range);
        tcase_add_test(tc, test_start_after_validation);
        tcase_add_test(tc, test_forwards_clash);
        tcase_add_test(tc, test_forwards_clash_same_address);
        tcase_add_test(tc, test_hostfwd_error);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? 0 : 1;
}
