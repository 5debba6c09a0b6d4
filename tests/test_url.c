/* SPDX-License-Identifier: MIT */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "macro.h"
#include "url.h"

typedef struct Case {
        const char *in, *out;
} Case;

static void check_cases(const Case *cases, size_t n) {
        for (size_t i = 0; i < n; i++) {
                _cleanup_free_ char *s = url_display(cases[i].in);
                ck_assert_msg(s, "url_display(\"%s\") returned NULL", cases[i].in);
                ck_assert_msg(streq(s, cases[i].out), "url_display(\"%s\"): got \"%s\", expected \"%s\"",
                              cases[i].in, s, cases[i].out);
        }
}

START_TEST(test_query_values_redacted) {
        static const Case cases[] = {
                { "https://gitlab.example/api/v4/x.img?private_token=glpat-SECRET",
                  "https://gitlab.example/api/v4/x.img?private_token=REDACTED" },
                { "https://b.s3.amazonaws.com/k.qcow2?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F2026"
                  "&X-Amz-Signature=0123abcd",
                  "https://b.s3.amazonaws.com/k.qcow2?X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED"
                  "&X-Amz-Signature=REDACTED" },
                /* order kept, an empty value stays empty, a bare item may be a token: replaced whole */
                { "http://h/p?b=2&a=&SECRETBARE&&c=x=y", "http://h/p?b=REDACTED&a=&REDACTED&&c=REDACTED" },
                { "http://h:8080/p?x=1", "http://h:8080/p?x=REDACTED" },
                /* libcurl reads a file URL's path only, and shows it so */
                { "file:///srv/img.qcow2?sig=abc", "file:///srv/img.qcow2" },
        };

        check_cases(cases, ELEMENTSOF(cases));
}
END_TEST

START_TEST(test_userinfo_and_fragment_dropped) {
        static const Case cases[] = {
                { "http://user:pass@host/x", "http://host/x" },
                { "https://user@host:8443/a/b?c=d", "https://host:8443/a/b?c=REDACTED" },
                { "http://host/p#frag-SECRET", "http://host/p" },
                { "http://host/p?t=SECRET#frag", "http://host/p?t=REDACTED" },
                { "http://host/path@with-at", "http://host/path@with-at" },
                { "http://u:p@ss@host/x", "http://host/x" },
                { "http://host", "http://host/" },
                { "file:///tmp/x", "file:///tmp/x" },
                { "http://host/a/../b", "http://host/a/../b" },
        };

        check_cases(cases, ELEMENTSOF(cases));
        ck_assert_ptr_null(url_display(NULL));
}
END_TEST

/* What libcurl refuses still loses everything after '?' (values), '#' and user:password@. */
START_TEST(test_unparsable_by_hand) {
        static const Case cases[] = {
                { "not a url", "not a url" },
                { "not a url?token=SECRET&x", "not a url?token=REDACTED&REDACTED" },
                { "http://host with space/p?sig=SECRET#f", "http://host with space/p?sig=REDACTED" },
                { "http://u:SECRET@bad host/p", "http://bad host/p" },
                { "http://h/?a=1#x?b=SECRET", "http://h/?a=REDACTED" },
                { "?SECRET", "?REDACTED" },
        };

        check_cases(cases, ELEMENTSOF(cases));
}
END_TEST

START_TEST(test_redact_query) {
        static const Case cases[] = {
                { "", "" },
                { "a", "REDACTED" },
                { "a=b", "a=REDACTED" },
                { "=b", "=REDACTED" },
                { "&&", "&&" },
                { "a=1&a=2", "a=REDACTED&a=REDACTED" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *s = url_redact_query(cases[i].in);
                ck_assert_str_eq(s, cases[i].out);
        }
        ck_assert_ptr_null(url_redact_query(NULL));
}
END_TEST

START_TEST(test_scrub_text) {
        const char *url = "https://h/x.img?private_token=SECRET1&X-Amz-Signature=SECRET2#frag";
        char text[256];

        strcpy(text, "Failed for https://h/x.img?private_token=SECRET1&X-Amz-Signature=SECRET2 (and "
                     "private_token=SECRET1&X-Amz-Signature=SECRET2 again)");
        ck_assert_int_eq(url_scrub_text(text, sizeof(text), url), 0);
        ck_assert_str_eq(text, "Failed for https://h/x.img?private_token=REDACTED&X-Amz-Signature=REDACTED (and "
                               "private_token=REDACTED&X-Amz-Signature=REDACTED again)");

        /* longer than before: cut short rather than overflow */
        char small[] = "at ?private_token=SECRET1&X-Amz-Signature=SECRET2 end";
        ck_assert_int_eq(url_scrub_text(small, sizeof(small), url), 0);
        ck_assert_str_eq(small, "at ?private_token=REDACTED&X-Amz-Signature=REDACTED e");
        char tiny[] = "?private_token=SECRET1&X-Amz-Signature=SECRET2";
        ck_assert_int_eq(url_scrub_text(tiny, sizeof(tiny), url), 0);
        ck_assert_str_eq(tiny, "?private_token=REDACTED&X-Amz-Signature=REDACT");

        /* nothing to do: no query, or text without it */
        strcpy(text, "Could not resolve host: h");
        ck_assert_int_eq(url_scrub_text(text, sizeof(text), "https://h/x.img"), 0);
        ck_assert_int_eq(url_scrub_text(text, sizeof(text), url), 0);
        ck_assert_str_eq(text, "Could not resolve host: h");
}
END_TEST

START_TEST(test_scheme) {
        ck_assert(url_scheme_is("http://h/x", "http"));
        ck_assert(url_scheme_is("HTTPS://h/x", "https"));
        ck_assert(url_scheme_is("https://h/x", "HTTPS"));
        ck_assert(url_scheme_is("file:///srv/x.img", "file"));
        ck_assert(!url_scheme_is("https://h/x", "http"));
        ck_assert(!url_scheme_is("ftp://h/x", "http"));
        /* a scheme name alone is no URL; nor is one libcurl cannot parse */
        ck_assert(!url_scheme_is("http", "http"));
        ck_assert(!url_scheme_is("http://bad host/x", "http"));
        ck_assert(!url_scheme_is(NULL, "http"));
}
END_TEST

START_TEST(test_password) {
        char *p = NULL;

        ck_assert_int_eq(url_password("http://user:s3cret@h/x", &p), 0);
        ck_assert_str_eq(p, "s3cret");
        p = mfree(p);
        /* as written: scrubbing looks for it in text that quotes the URL */
        ck_assert_int_eq(url_password("https://u:p%40ss@h:8443/x?q=1", &p), 0);
        ck_assert_str_eq(p, "p%40ss");
        p = mfree(p);
        ck_assert_int_eq(url_password("http://user@h/x", &p), 0);
        ck_assert_ptr_null(p);
        ck_assert_int_eq(url_password("http://user:@h/x", &p), 0);
        ck_assert_ptr_null(p);
        ck_assert_int_eq(url_password("http://h/a:b@c", &p), 0);
        ck_assert_ptr_null(p);
        ck_assert_int_eq(url_password("not a url", &p), 0);
        ck_assert_ptr_null(p);
}
END_TEST

START_TEST(test_same_origin) {
        ck_assert(url_same_origin("http://h/a", "http://h/b?x=1"));
        ck_assert(url_same_origin("http://H/a", "http://h:80/b"));
        ck_assert(url_same_origin("https://u:p@h/a", "https://h:443/"));
        ck_assert(!url_same_origin("http://h/a", "https://h/a"));
        ck_assert(!url_same_origin("http://h/a", "http://h:8080/a"));
        ck_assert(!url_same_origin("http://h/a", "http://g/a"));
        ck_assert(!url_same_origin("http://h/a", "not a url"));
        ck_assert(!url_same_origin("not a url", "not a url"));
}
END_TEST

START_TEST(test_file_name) {
        static const Case cases[] = {
                { "http://h/images/jammy.img", "jammy.img" },
                { "https://u:p@h/a/b%20c.qcow2?sig=x#frag", "b c.qcow2" },
                /* split before decoding: an encoded slash belongs to the name */
                { "http://h/a/x%2Fy.img", "x/y.img" },
                { "file:///srv/img/disk.raw", "disk.raw" },
                { "http://h/dir/", "" },
                { "http://h", "" },
                { "http://h/%zz", "%zz" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                _cleanup_free_ char *n = NULL;
                ck_assert_int_eq(url_file_name(cases[i].in, &n), 0);
                ck_assert_msg(streq(n, cases[i].out), "url_file_name(\"%s\"): got \"%s\", expected \"%s\"",
                              cases[i].in, n, cases[i].out);
        }
        char *n = NULL;
        ck_assert_int_eq(url_file_name("http://bad host/x.img", &n), -EINVAL);
        ck_assert_ptr_null(n);
}
END_TEST

int main(void) {
        Suite *s = suite_create("url");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_query_values_redacted);
        tcase_add_test(tc, test_userinfo_and_fragment_dropped);
        tcase_add_test(tc, test_unparsable_by_hand);
        tcase_add_test(tc, test_redact_query);
        tcase_add_test(tc, test_scrub_text);
        tcase_add_test(tc, test_scheme);
        tcase_add_test(tc, test_password);
        tcase_add_test(tc, test_same_origin);
        tcase_add_test(tc, test_file_name);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? 0 : 1;
}
