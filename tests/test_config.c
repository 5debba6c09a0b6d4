/* SPDX-License-Identifier: MIT */
/* The daemon's settings: what config_finish derives, and socket_group resolved to a gid once, at start-up (the
 * loop never asks NSS: issue 10). */
#include <check.h>
#include <grp.h>
#include <stdbool.h>
#include <pwd.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

START_TEST(test_finish_defaults) {
        HydraConfig c;
        HydraError err;

        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(config_finish(&c, &err), 0);
        ck_assert_str_eq(c.state_dir, "/var/lib/hydra");
        ck_assert_str_eq(c.socket_path, "/run/hydra/hydra.sock");
        ck_assert_int_eq(c.socket_gid, (gid_t) -1);
        config_done(&c);
}
END_TEST

START_TEST(test_socket_group_resolved) {
        struct group *g = getgrgid(0);
        _cleanup_free_ char *name = NULL;
        HydraConfig c;
        HydraError err;

        ck_assert_ptr_nonnull(g); /* gid 0 has a name everywhere we build */
        name = strdup(g->gr_name);
        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "socket_group", name, &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), 0);
        ck_assert_int_eq(c.socket_gid, 0);
        config_done(&c);
        ck_assert_int_eq(c.socket_gid, (gid_t) -1); /* config_done resets */
}
END_TEST

START_TEST(test_socket_group_unknown) {
        HydraConfig c;
        HydraError err;

        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "socket_group", "hydra-no-such-group", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), -ENOENT);
        ck_assert_str_eq(err.message, "socket_group: group 'hydra-no-such-group' does not exist");
        config_done(&c);
}
END_TEST

/* qemu_user (issue 13): resolved once to uid, gid and groups; unknown, root, and (as another user than root) a user
 * hydrad could not switch to are refused, naming why. */
START_TEST(test_qemu_user) {
        struct passwd *pw = getpwnam("nobody");
        HydraConfig c;
        HydraError err;

        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(config_finish(&c, &err), 0);
        ck_assert_int_eq(c.qemu_uid, (uid_t) -1); /* none: QEMU runs as hydrad */
        config_done(&c);

        config_init(&c);
        ck_assert_int_eq(config_set(&c, "qemu_user", "hydra-no-such-user", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), -ENOENT);
        ck_assert_str_eq(err.message, "qemu_user: user 'hydra-no-such-user' does not exist");
        config_done(&c);

        config_init(&c);
        ck_assert_int_eq(config_set(&c, "qemu_user", "root", &err), 0);
        ck_assert_int_lt(config_finish(&c, &err), 0);
        ck_assert_msg(strstr(err.message, "'root' is root"), "%s", err.message);
        config_done(&c);

        ck_assert_ptr_nonnull(pw);
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "qemu_user", "nobody", &err), 0);
        if (geteuid() == 0) {
                bool primary = false;

                ck_assert_int_eq(config_finish(&c, &err), 0);
                ck_assert_int_eq(c.qemu_uid, pw->pw_uid);
                ck_assert_int_eq(c.qemu_gid, pw->pw_gid);
                for (size_t i = 0; i < c.n_qemu_groups; i++)
                        primary = primary || c.qemu_groups[i] == pw->pw_gid;
                ck_assert(primary);
        } else {
                ck_assert_int_eq(config_finish(&c, &err), -EPERM);
                ck_assert_msg(strstr(err.message, "cannot run QEMU as 'nobody'"), "%s", err.message);
        }
        config_done(&c);

        if (getpwnam("hydra-qemu"))
                return; /* the package is installed here */
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "qemu_user", "hydra-qemu", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), -ENOENT);
        ck_assert_msg(strstr(err.message, "useradd --system"), "%s", err.message);
        config_done(&c);
}
END_TEST

/* The readonly group is resolved like socket_group; a missing "hydra" group says how it is made (issue 13). */
START_TEST(test_readonly_group) {
        HydraConfig c;
        HydraError err;

        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "readonly_group", "root", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), 0);
        ck_assert_int_eq(c.readonly_gid, 0);
        config_done(&c);

        config_init(&c);
        ck_assert_int_eq(config_set(&c, "readonly_group", "hydra-no-such-group", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), -ENOENT);
        ck_assert_str_eq(err.message, "readonly_group: group 'hydra-no-such-group' does not exist");
        config_done(&c);

        if (getgrnam("hydra"))
                return; /* the package is installed here */
        config_init(&c);
        ck_assert_int_eq(config_set(&c, "socket_group", "hydra", &err), 0);
        ck_assert_int_eq(config_finish(&c, &err), -ENOENT);
        ck_assert_str_eq(err.message, "socket_group: group 'hydra' does not exist (the package's "
                                      "sysusers.d/hydra.conf makes it: systemd-sysusers, or groupadd --system hydra)");
        config_done(&c);
}
END_TEST

START_TEST(test_socket_mode) {
        const char *bad[] = { "0777", "0460", "abc", "", "-0660", "01660", "0660x", "9" };
        HydraConfig c;
        HydraError err;

        hydra_error_clear(&err);
        config_init(&c);
        ck_assert_int_eq(c.socket_mode, 0660);
        ck_assert_int_eq(config_set(&c, "socket_mode", "0666", &err), 0);
        ck_assert_int_eq(c.socket_mode, 0666);
        ck_assert_int_eq(config_set(&c, "socket_mode", "600", &err), 0);
        ck_assert_int_eq(c.socket_mode, 0600);
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                ck_assert_int_eq(config_set(&c, "socket_mode", bad[i], &err), -EINVAL);
                ck_assert_msg(strstr(err.message, "socket_mode: '") && strstr(err.message, "is not allowed"), "%s",
                              err.message);
                ck_assert_int_eq(c.socket_mode, 0600);
        }
        config_done(&c);
}
END_TEST

int main(void) {
        Suite *s = suite_create("config");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_finish_defaults);
        tcase_add_test(tc, test_socket_group_resolved);
        tcase_add_test(tc, test_socket_group_unknown);
        tcase_add_test(tc, test_readonly_group);
        tcase_add_test(tc, test_qemu_user);
        tcase_add_test(tc, test_socket_mode);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
