/* SPDX-License-Identifier: MIT */
/* utf8_valid (common/utf8.c) and pb_check_strings (daemon/pbcheck.c) on the real hydra.v1 descriptors: messages
 * packed by protobuf-c, then one byte of a string changed the way a hostile client would. */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hydra/v1/hydra.pb-c.h"
#include "macro.h"
#include "pbcheck.h"
#include "utf8.h"

typedef struct Utf8Case {
        const char *bytes;
        size_t n;
        bool valid;
} Utf8Case;

#define U(s, v) { s, sizeof(s) - 1, v }

static const Utf8Case utf8_cases[] = {
        U("", true),
        U("plain ascii", true),
        U("a\0b", true),                  /* U+0000 is UTF-8; NUL is the callers' concern */
        U("\xc3\xa9t\xc3\xa9", true),     /* été */
        U("\xe2\x82\xac", true),          /* U+20AC */
        U("\xef\xbf\xbf", true),          /* U+FFFF */
        U("\xf0\x9f\x98\x80", true),      /* U+1F600 */
        U("\xf4\x8f\xbf\xbf", true),      /* U+10FFFF, the last one */
        U("\xed\x9f\xbf", true),          /* U+D7FF, just below the surrogates */
        U("\xee\x80\x80", true),          /* U+E000, just above */
        U("\xff", false),
        U("\xfe", false),
        U("\x80", false),                 /* a continuation byte first */
        U("a\xbf", false),
        U("\xc3", false),                 /* cut short */
        U("\xe2\x82", false),
        U("\xf0\x9f\x98", false),
        U("\xc3(", false),                /* not a continuation */
        U("\xc0\x80", false),             /* overlong NUL */
        U("\xc1\xbf", false),             /* overlong U+007F */
        U("\xe0\x80\xaf", false),         /* overlong '/' */
        U("\xe0\x9f\xbf", false),         /* overlong U+07FF */
        U("\xf0\x8f\xbf\xbf", false),     /* overlong U+FFFF */
        U("\xed\xa0\x80", false),         /* U+D800, a surrogate */
        U("\xed\xbf\xbf", false),         /* U+DFFF */
        U("\xf4\x90\x80\x80", false),     /* U+110000 */
        U("\xf8\x88\x80\x80\x80", false), /* a 5-byte form */
};

START_TEST(test_utf8) {
        const Utf8Case *c = &utf8_cases[_i];

        ck_assert_msg(utf8_valid(c->bytes, c->n) == c->valid, "case %d: expected %s", _i,
                      c->valid ? "valid" : "invalid");
}
END_TEST

START_TEST(test_utf8_length_bounds) {
        /* n, not the NUL, ends the input: a sequence cut by n is invalid even if bytes follow in memory. */
        ck_assert(utf8_valid("\xe2\x82\xac", 3));
        ck_assert(!utf8_valid("\xe2\x82\xac", 2));
        ck_assert(utf8_valid("\xe2\x82\xac", 0));
}
END_TEST

/* A RegisterVmRequest with hostname "hXst", ssh keys "key-0", "kXy-1", cmdline "console=ttyS0": packed. */
static uint8_t *pack_register(size_t *ret_size) {
        Hydra__V1__RegisterVmRequest req = HYDRA__V1__REGISTER_VM_REQUEST__INIT;
        Hydra__V1__VmSpec spec = HYDRA__V1__VM_SPEC__INIT;
        Hydra__V1__Guest guest = HYDRA__V1__GUEST__INIT;
        Hydra__V1__KernelBoot kernel = HYDRA__V1__KERNEL_BOOT__INIT;
        char *keys[] = { (char *) "key-0", (char *) "kXy-1" };
        uint8_t *buf;

        guest.hostname = (char *) "hXst";
        guest.n_ssh_authorized_keys = ELEMENTSOF(keys);
        guest.ssh_authorized_keys = keys;
        kernel.kernel = (char *) "/boot/vmlinuz";
        kernel.cmdline = (char *) "console=ttyS0";
        spec.cpus = 2;
        spec.memory_mib = 512;
        spec.guest = &guest;
        spec.kernel = &kernel;
        req.role = HYDRA__V1__ROLE__ROLE_HOST;
        req.spec = &spec;
        *ret_size = hydra__v1__register_vm_request__get_packed_size(&req);
        buf = malloc(*ret_size);
        ck_assert_ptr_nonnull(buf);
        hydra__v1__register_vm_request__pack(&req, buf);
        return buf;
}

/* Replaces the byte at the first occurrence of needle + offset. */
static void poke(uint8_t *buf, size_t size, const char *needle, size_t offset, uint8_t byte) {
        uint8_t *p = memmem(buf, size, needle, strlen(needle));

        ck_assert_ptr_nonnull(p);
        p[offset] = byte;
}

START_TEST(test_valid_request) {
        _cleanup_free_ uint8_t *buf = NULL;
        HydraError err = {};
        size_t n;

        buf = pack_register(&n);
        ck_assert_int_eq(pb_check_strings(&hydra__v1__register_vm_request__descriptor, buf, n, &err), 0);
        ck_assert_int_eq(pb_check_strings(&hydra__v1__register_vm_request__descriptor, NULL, 0, &err), 0);
}
END_TEST

typedef struct Poke {
        const char *needle;
        size_t offset;
        uint8_t byte;
        const char *message;
} Poke;

static const Poke pokes[] = {
        { "hXst", 1, 0x00, "spec.guest.hostname: holds a NUL byte" },
        { "hXst", 1, 0xff, "spec.guest.hostname: is not valid UTF-8" },
        { "hXst", 3, 0xc3, "spec.guest.hostname: is not valid UTF-8" }, /* a sequence the field's end cuts */
        { "kXy-1", 1, 0x00, "spec.guest.ssh_authorized_keys[1]: holds a NUL byte" },
        { "kXy-1", 1, 0xed, "spec.guest.ssh_authorized_keys[1]: is not valid UTF-8" },
        { "console=ttyS0", 12, 0x80, "spec.kernel.cmdline: is not valid UTF-8" },
};

START_TEST(test_bad_string) {
        const Poke *k = &pokes[_i];
        _cleanup_free_ uint8_t *buf = NULL;
        HydraError err = {};
        size_t n;

        buf = pack_register(&n);
        poke(buf, n, k->needle, k->offset, k->byte);
        ck_assert_int_eq(pb_check_strings(&hydra__v1__register_vm_request__descriptor, buf, n, &err), -EINVAL);
        ck_assert_int_eq(err.code, -EINVAL);
        ck_assert_msg(strncmp(err.message, k->message, strlen(k->message)) == 0, "got '%s', expected '%s...'",
                      err.message, k->message);
        /* What the check is for: protobuf-c itself takes these bytes. */
        if (k->byte != 0x00) {
                Hydra__V1__RegisterVmRequest *m = hydra__v1__register_vm_request__unpack(NULL, n, buf);
                ck_assert_ptr_nonnull(m);
                hydra__v1__register_vm_request__free_unpacked(m, NULL);
        }
}
END_TEST

START_TEST(test_stored_spec_path) {
        /* The stored spec.pb is a VmSpec: the path starts at its fields. */
        Hydra__V1__VmSpec spec = HYDRA__V1__VM_SPEC__INIT;
        Hydra__V1__Guest guest = HYDRA__V1__GUEST__INIT;
        uint8_t buf[128];
        HydraError err = {};
        size_t n;

        guest.hostname = (char *) "hXst";
        spec.guest = &guest;
        n = hydra__v1__vm_spec__pack(&spec, buf);
        poke(buf, n, "hXst", 1, 0xc0);
        ck_assert_int_eq(pb_check_strings(&hydra__v1__vm_spec__descriptor, buf, n, &err), -EINVAL);
        ck_assert_str_eq(err.message, "guest.hostname: is not valid UTF-8");
}
END_TEST

START_TEST(test_bytes_and_unknown_fields) {
        /* A bytes field may hold anything; so may a field the descriptor does not know (kept aside). */
        Hydra__V1__PlannedFile f = HYDRA__V1__PLANNED_FILE__INIT;
        uint8_t content[] = { 0xff, 0x00, 0xc0, 0x80 }, buf[64];
        HydraError err = {};
        size_t n;

        f.path = (char *) "/seed/user-data";
        f.content.data = content;
        f.content.len = sizeof(content);
        n = hydra__v1__planned_file__pack(&f, buf);
        ck_assert_int_eq(pb_check_strings(&hydra__v1__planned_file__descriptor, buf, n, &err), 0);

        /* field 15, length-delimited, 2 bytes of invalid UTF-8 */
        buf[n++] = (15 << 3) | 2;
        buf[n++] = 2;
        buf[n++] = 0xff;
        buf[n++] = 0x00;
        ck_assert_int_eq(pb_check_strings(&hydra__v1__planned_file__descriptor, buf, n, &err), 0);
}
END_TEST

START_TEST(test_malformed) {
        static const struct {
                const char *bytes;
                size_t n;
        } bad[] = {
                { "\x0a", 1 },                                     /* field 1, length missing */
                { "\x0a\x05" "ab", 4 },                            /* length beyond the end */
                { "\x08", 1 },                                     /* varint missing */
                { "\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12 }, /* an 11-byte varint */
                { "\x0b", 1 },                                     /* a group */
                { "\x0e", 1 },                                     /* wire type 6 */
                { "\x00", 1 },                                     /* field 0 */
                { "\x09" "1234567", 8 },                           /* 64-bit cut short */
                { "\x12\x03\x0a\x05x", 5 },                        /* spec, whose field is cut short inside */
        };
        HydraError err = {};

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                hydra_error_clear(&err);
                ck_assert_msg(pb_check_strings(&hydra__v1__register_vm_request__descriptor, bad[i].bytes, bad[i].n,
                                               &err) == -EBADMSG, "case %zu", i);
                ck_assert_msg(strstr(err.message, "not a valid"), "case %zu: '%s'", i, err.message);
        }
}
END_TEST

static Suite *pbcheck_suite(void) {
        Suite *s = suite_create("pbcheck");
        TCase *tc;

        tc = tcase_create("utf8");
        tcase_add_loop_test(tc, test_utf8, 0, ELEMENTSOF(utf8_cases));
        tcase_add_test(tc, test_utf8_length_bounds);
        suite_add_tcase(s, tc);

        tc = tcase_create("walker");
        tcase_add_test(tc, test_valid_request);
        tcase_add_loop_test(tc, test_bad_string, 0, ELEMENTSOF(pokes));
        tcase_add_test(tc, test_stored_spec_path);
        tcase_add_test(tc, test_bytes_and_unknown_fields);
        tcase_add_test(tc, test_malformed);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(pbcheck_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
