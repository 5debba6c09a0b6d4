/* SPDX-License-Identifier: MIT */
/* daemon/fetch_meta.c: checksums, SUMS files, headers, the cache key and meta.json as data. Expected values are
 * written out here (the key's digest computed with sha256sum), not derived from the code under test. */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "fetch.h"
#include "fetch_meta.h"
#include "macro.h"

#define H64 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
#define H128 H64 "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"

START_TEST(test_parse_checksum) {
        char hex[FETCH_HEX_MAX];
        DigestAlgo a = DIGEST_NONE;

        ck_assert_int_eq(fetch_parse_checksum("sha256:" H64, &a, hex), 0);
        ck_assert_int_eq(a, DIGEST_SHA256);
        ck_assert_str_eq(hex, H64);
        ck_assert_int_eq(fetch_parse_checksum("SHA512:" H128, &a, hex), 0);
        ck_assert_int_eq(a, DIGEST_SHA512);
        ck_assert_str_eq(hex, H128);
        /* bare: the length says which; uppercase hex is lowercased */
        ck_assert_int_eq(fetch_parse_checksum("0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF", &a,
                                              hex),
                         0);
        ck_assert_int_eq(a, DIGEST_SHA256);
        ck_assert_str_eq(hex, H64);

        ck_assert_int_eq(fetch_parse_checksum("sha512:" H64, &a, hex), -EINVAL); /* name and length disagree */
        ck_assert_int_eq(fetch_parse_checksum("md5:0123456789abcdef0123456789abcdef", &a, hex), -EINVAL);
        ck_assert_int_eq(fetch_parse_checksum("sha256:" H64 "0", &a, hex), -EINVAL);
        ck_assert_int_eq(fetch_parse_checksum("sha256:g123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
                                              &a, hex),
                         -EINVAL);
        ck_assert_int_eq(fetch_parse_checksum("", &a, hex), -EINVAL);

        ck_assert_str_eq(digest_algo_to_string(DIGEST_SHA256), "sha256");
        ck_assert_str_eq(digest_algo_to_string(DIGEST_SHA512), "sha512");
        ck_assert_ptr_null(digest_algo_to_string(DIGEST_NONE));
}
END_TEST

static void check_lookup(const char *text, const char *name, int want_r, DigestAlgo want_algo, const char *want_hex) {
        char hex[FETCH_HEX_MAX] = "";
        DigestAlgo a = DIGEST_NONE;
        int r = fetch_sums_lookup(text, strlen(text), name, &a, hex);

        ck_assert_msg(r == want_r, "lookup of '%s': %d, expected %d", name, r, want_r);
        if (want_r == 0) {
                ck_assert_int_eq(a, want_algo);
                ck_assert_str_eq(hex, want_hex);
        }
}

START_TEST(test_sums_lookup) {
        const char *gnu = H64 "  other.img\n"
                          "FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210FEDCBA9876543210 *jammy.img\r\n"
                          "  " H128 "  ./noble.img\n"
                          "0123  short.img\n"
                          "garbage line\n"
                          H64 "  with space.img";
        const char *bsd = "SHA256 (a.img) = " H64 "\n"
                          "SHA512 (b (1).img) = " H128 "\n"
                          "SHA256 (c.img) " H64 "\n";

        check_lookup(gnu, "other.img", 0, DIGEST_SHA256, H64);
        check_lookup(gnu, "jammy.img", 0, DIGEST_SHA256,
                     "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210");
        check_lookup(gnu, "noble.img", 0, DIGEST_SHA512, H128);
        check_lookup(gnu, "with space.img", 0, DIGEST_SHA256, H64); /* the last line has no newline */
        check_lookup(gnu, "short.img", -ENOENT, DIGEST_NONE, NULL);  /* a digest of no known length */
        check_lookup(gnu, "missing.img", -ENOENT, DIGEST_NONE, NULL);
        check_lookup(gnu, "jammy", -ENOENT, DIGEST_NONE, NULL);      /* whole names only */
        check_lookup(bsd, "a.img", 0, DIGEST_SHA256, H64);
        check_lookup(bsd, "b (1).img", 0, DIGEST_SHA512, H128);      /* the name ends at the last ") = " */
        check_lookup(bsd, "c.img", -ENOENT, DIGEST_NONE, NULL);
        check_lookup("", "a.img", -ENOENT, DIGEST_NONE, NULL);
}
END_TEST

START_TEST(test_headers) {
        static const char etag[] = "ETag:  \"abc\" \r\n";
        static const char lm[] = "last-modified: Wed, 21 Oct 2015 07:28:00 GMT\r\n";
        char *v;

        v = fetch_header_value(etag, strlen(etag), "ETag");
        ck_assert_str_eq(v, "\"abc\"");
        free(v);
        v = fetch_header_value(lm, strlen(lm), "Last-Modified");
        ck_assert_str_eq(v, "Wed, 21 Oct 2015 07:28:00 GMT");
        free(v);
        ck_assert_ptr_null(fetch_header_value(etag, strlen(etag), "ETags"));
        ck_assert_ptr_null(fetch_header_value(lm, strlen(lm), "Last"));
        ck_assert_ptr_null(fetch_header_value("ETag", 4, "ETag"));

        ck_assert_int_eq(fetch_content_range_start("bytes 100-199/200"), 100);
        ck_assert_int_eq(fetch_content_range_start("bytes 0-0/*"), 0);
        ck_assert_int_eq(fetch_content_range_start("bytes */200"), -1);
        ck_assert_int_eq(fetch_content_range_start("items 1-2/3"), -1);
        ck_assert_int_eq(fetch_content_range_start(NULL), -1);
}
END_TEST

START_TEST(test_cache_key) {
        char k[65];

        /* printf %s URL | sha256sum: the key is the URL as written, user:password@ cut, query kept */
        ck_assert_int_eq(fetch_cache_key("http://host/x", k), 0);
        ck_assert_str_eq(k, "d3a05da30b964209960677bb507b974dd93e73d849dd57b851b1000ccbcd37d9");
        ck_assert_int_eq(fetch_cache_key("http://user:secret@host/x", k), 0);
        ck_assert_str_eq(k, "d3a05da30b964209960677bb507b974dd93e73d849dd57b851b1000ccbcd37d9");
        ck_assert_int_eq(fetch_cache_key("http://u:p@ss@host:8080/dir/x.img?private_token=abc", k), 0);
        ck_assert_str_eq(k, "2d247bafb60ef13b95a2ece7941a3cb2f04126d9272cdb4eb7ad06bab14940e4");
        /* not normalized: an older hydrad's entries keep their keys */
        ck_assert_int_eq(fetch_cache_key("http://host", k), 0);
        ck_assert_str_eq(k, "a7ea5c455a69bc0ee07766940e5f6e753561a8d9f340b49ebe4f9d843e97dbee");
        /* an '@' in the path is not userinfo */
        ck_assert_int_eq(fetch_cache_key("http://host/a@b", k), 0);
        ck_assert_str_ne(k, "d3a05da30b964209960677bb507b974dd93e73d849dd57b851b1000ccbcd37d9");

        _cleanup_free_ char *e = fetch_cache_entry("/var/cache/hydra", "http://host/x");
        ck_assert_str_eq(e, "/var/cache/hydra/d3a05da30b964209960677bb507b974dd93e73d849dd57b851b1000ccbcd37d9");
}
END_TEST

START_TEST(test_meta_parse) {
        static const char good[] = "{\"url\": \"http://h/x?t=REDACTED\", \"size\": 5, \"sha256\": \"" H64 "\"}";
        json_t *m;

        m = fetch_meta_parse(good, strlen(good));
        ck_assert(fetch_meta_describes(m, 5));
        ck_assert(!fetch_meta_describes(m, 6));
        ck_assert(!fetch_meta_url_stale(m, "http://h/x?t=REDACTED"));
        ck_assert(fetch_meta_url_stale(m, "http://h/x"));
        ck_assert_str_eq(fetch_meta_string(m, "sha256"), H64);
        ck_assert_ptr_null(fetch_meta_string(m, "size")); /* not a string */
        ck_assert_ptr_null(fetch_meta_if_range(m));
        json_decref(m);

        /* damaged, not an object, absent: an empty object (a cache miss) */
        static const char *const bad[] = { "{\"url\": ", "[1, 2]", "", "null" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                m = fetch_meta_parse(bad[i], strlen(bad[i]));
                ck_assert(json_is_object(m));
                ck_assert_int_eq(json_object_size(m), 0);
                ck_assert(!fetch_meta_describes(m, 0));
                ck_assert(!fetch_meta_url_stale(m, "http://h/x"));
                json_decref(m);
        }
        m = fetch_meta_parse(NULL, 0);
        ck_assert_int_eq(json_object_size(m), 0);
        json_decref(m);

        /* a short digest or a negative size describes nothing */
        static const char short_sha[] = "{\"size\": 5, \"sha256\": \"0123\"}";
        m = fetch_meta_parse(short_sha, strlen(short_sha));
        ck_assert(!fetch_meta_describes(m, 5));
        json_decref(m);
}
END_TEST

START_TEST(test_meta_part) {
        json_t *m = json_object();

        ck_assert_int_eq(fetch_meta_set_part(m, "\"v1\"", "Wed, 21 Oct 2015 07:28:00 GMT"), 0);
        ck_assert_str_eq(fetch_meta_if_range(m), "\"v1\"");
        /* If-Range takes a strong validator only: a weak ETag gives way to Last-Modified */
        ck_assert_int_eq(fetch_meta_set_part(m, "W/\"v2\"", "Thu, 22 Oct 2015 07:28:00 GMT"), 0);
        ck_assert_str_eq(fetch_meta_if_range(m), "Thu, 22 Oct 2015 07:28:00 GMT");
        ck_assert_int_eq(fetch_meta_set_part(m, "W/\"v3\"", NULL), 0);
        ck_assert_ptr_null(fetch_meta_if_range(m));
        ck_assert_int_eq(fetch_meta_set_part(m, NULL, "Fri, 23 Oct 2015 07:28:00 GMT"), 0);
        ck_assert_str_eq(fetch_meta_if_range(m), "Fri, 23 Oct 2015 07:28:00 GMT");
        json_decref(m);
}
END_TEST

START_TEST(test_meta_new_and_format) {
        _cleanup_free_ char *text = NULL, *text2 = NULL;
        json_t *m, *back;

        m = fetch_meta_new("http://h/x?t=REDACTED", "\"e\"", NULL, 42, H64, "", 1700000000);
        text = fetch_meta_format(m);
        ck_assert_str_eq(text, "{\n"
                               "  \"etag\": \"\\\"e\\\"\",\n"
                               "  \"sha256\": \"" H64 "\",\n"
                               "  \"size\": 42,\n"
                               "  \"time\": 1700000000,\n"
                               "  \"url\": \"http://h/x?t=REDACTED\"\n"
                               "}");
        back = fetch_meta_parse(text, strlen(text));
        ck_assert(fetch_meta_describes(back, 42));
        ck_assert_ptr_null(fetch_meta_string(back, "sha512"));
        ck_assert_ptr_null(fetch_meta_string(back, "last_modified"));
        json_decref(back);
        json_decref(m);

        m = fetch_meta_new("http://h/y", NULL, "Wed, 21 Oct 2015 07:28:00 GMT", 0, H64, H128, 0);
        text2 = fetch_meta_format(m);
        back = fetch_meta_parse(text2, strlen(text2));
        ck_assert_str_eq(fetch_meta_string(back, "sha512"), H128);
        ck_assert_str_eq(fetch_meta_string(back, "last_modified"), "Wed, 21 Oct 2015 07:28:00 GMT");
        ck_assert(fetch_meta_describes(back, 0));
        json_decref(back);
        json_decref(m);
}
END_TEST

START_TEST(test_hex_encode) {
        static const unsigned char d[] = { 0x00, 0x0f, 0xa5, 0xff };
        char out[9];

        fetch_hex_encode(d, sizeof(d), out);
        ck_assert_str_eq(out, "000fa5ff");
        fetch_hex_encode(d, 0, out);
        ck_assert_str_eq(out, "");
}
END_TEST

int main(void) {
        Suite *s = suite_create("fetch_meta");
        TCase *tc = tcase_create("core");
        SRunner *sr;
        int failed;

        tcase_add_test(tc, test_parse_checksum);
        tcase_add_test(tc, test_sums_lookup);
        tcase_add_test(tc, test_headers);
        tcase_add_test(tc, test_cache_key);
        tcase_add_test(tc, test_meta_parse);
        tcase_add_test(tc, test_meta_part);
        tcase_add_test(tc, test_meta_new_and_format);
        tcase_add_test(tc, test_hex_encode);
        suite_add_tcase(s, tc);
        sr = srunner_create(s);
        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? 0 : 1;
}
