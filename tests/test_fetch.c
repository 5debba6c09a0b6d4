/* SPDX-License-Identifier: MIT */
/* fetch.c against tests/httpd.py on 127.0.0.1: each test gets a fresh server, cache and sd_event, and runs the
 * loop until the done callback fires. hydrad's log (stderr) is captured to a file so that tests can assert a
 * secret never reached it. Set FETCH_TEST_DEBUG=1 to see that log instead. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "fetch.h"
#include "log.h"
#include "macro.h"
#include "store.h"
#include "url.h"

#define HTTPD TEST_DATA_DIR "/../httpd.py"
#define PYTHON "/usr/bin/python3"
#define USEC_PER_MSEC 1000ULL
#define USEC_PER_SEC 1000000ULL
#define RUN_BOUND_USEC (20ULL * USEC_PER_SEC)

#define TOKEN "s3cr3t-t0ken-9f2c"
#define PASSWORD "pa55-w0rd-77ab"

/* What the callbacks saw. */
typedef struct Outcome {
        bool done;
        int r;
        char path[PATH_MAX];
        char sha256[129];
        char notice[256];
        char error[1024];
        bool from_cache, revalidated;

        unsigned n_progress;
        uint64_t last_bytes, last_total;
        bool progress_decreased;

        /* actions taken from the progress callback */
        uint64_t kill_server_at;  /* kill -9 the server once this many bytes arrived (0: never) */
        bool cancel_in_progress;
        Fetch *fetch;
} Outcome;

static char tmpdir[64];
static char root[PATH_MAX], cache[PATH_MAX], srv_log[PATH_MAX], port_file[PATH_MAX], our_log[PATH_MAX];
static pid_t httpd_pid = -1;
static int port;
static sd_event *event;
static Fetcher *fetcher;
static int saved_stderr = -EBADF;

static uint64_t now_usec(void) {
        struct timespec ts;

        ck_assert_int_eq(clock_gettime(CLOCK_MONOTONIC, &ts), 0);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000ULL;
}

static char *strf(const char *fmt, ...) _printf_(1, 2);
static char *strf(const char *fmt, ...) {
        va_list ap;
        char *s;

        va_start(ap, fmt);
        ck_assert_int_ge(vasprintf(&s, fmt, ap), 0);
        va_end(ap);
        return s;
}

static char *url_of(const char *name) {
        return strf("http://127.0.0.1:%d/%s", port, name);
}

static void sha_hex(const EVP_MD *md, const void *data, size_t n, char out[static 129]) {
        static const char digits[] = "0123456789abcdef";
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned dl = 0;

        ck_assert_int_eq(EVP_Digest(data, n, d, &dl, md, NULL), 1);
        for (unsigned i = 0; i < dl; i++) {
                out[2 * i] = digits[d[i] >> 4];
                out[2 * i + 1] = digits[d[i] & 15];
        }
        out[2 * dl] = '\0';
}

static char *read_file(const char *path, size_t *ret_size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        char *buf;
        size_t have = 0;

        if (fd < 0)
                return NULL;
        ck_assert_int_eq(fstat(fd, &st), 0);
        buf = malloc((size_t) st.st_size + 1);
        ck_assert_ptr_nonnull(buf);
        while (have < (size_t) st.st_size) {
                ssize_t n = read(fd, buf + have, (size_t) st.st_size - have);
                ck_assert_int_gt(n, 0);
                have += (size_t) n;
        }
        buf[have] = '\0';
        if (ret_size)
                *ret_size = have;
        return buf;
}

static bool file_exists(const char *path) {
        return access(path, F_OK) == 0;
}

static off_t file_size(const char *path) {
        struct stat st;

        return stat(path, &st) < 0 ? -1 : st.st_size;
}

/* A file of pseudo-random bytes under the server's root; its digests go to sha256/sha512 if non-NULL. */
static void make_file(const char *name, size_t size, char *sha256, char *sha512) {
        _cleanup_free_ char *path = strf("%s/%s", root, name);
        _cleanup_free_ unsigned char *buf = malloc(size ?: 1);
        _cleanup_close_ int fd = -EBADF;
        uint32_t x = 2463534242u ^ (uint32_t) size;

        ck_assert_ptr_nonnull(buf);
        for (size_t i = 0; i < size; i++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf[i] = (unsigned char) x;
        }
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(write(fd, buf, size), (ssize_t) size);
        if (sha256)
                sha_hex(EVP_sha256(), buf, size, sha256);
        if (sha512)
                sha_hex(EVP_sha512(), buf, size, sha512);
}

static void write_text(const char *name, const char *text) {
        _cleanup_free_ char *path = strf("%s/%s", root, name);
        FILE *f = fopen(path, "we");

        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(text, f), 0);
        ck_assert_int_eq(fclose(f), 0);
}

/* --- the server --- */

static void httpd_start_on(int want_port, const char *const *extra) {
        const char *argv[32];
        _cleanup_free_ char *port_arg = strf("%d", want_port);
        size_t n = 0;
        uint64_t deadline;
        pid_t pid;

        (void) unlink(port_file);
        argv[n++] = PYTHON;
        argv[n++] = HTTPD;
        argv[n++] = "--root";
        argv[n++] = root;
        argv[n++] = "--port";
        argv[n++] = port_arg;
        argv[n++] = "--port-file";
        argv[n++] = port_file;
        argv[n++] = "--log";
        argv[n++] = srv_log;
        for (; extra && *extra; extra++) {
                ck_assert_int_lt(n, ELEMENTSOF(argv) - 1);
                argv[n++] = *extra;
        }
        argv[n] = NULL;

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                /* never outlive the test, even one that failed before its teardown */
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (saved_stderr >= 0)
                        (void) dup2(saved_stderr, STDERR_FILENO);
                execv(PYTHON, (char *const *) argv);
                _exit(127);
        }
        httpd_pid = pid;

        deadline = now_usec() + 10 * USEC_PER_SEC;
        for (;;) {
                _cleanup_free_ char *s = read_file(port_file, NULL);
                if (s) {
                        port = atoi(s);
                        break;
                }
                ck_assert_msg(now_usec() < deadline, "httpd.py did not start");
                ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), 0);
                (void) usleep(10 * 1000);
        }
        ck_assert_int_gt(port, 0);
}

static void httpd_start(const char *const *extra) {
        httpd_start_on(0, extra);
}

static void httpd_stop(int sig) {
        if (httpd_pid <= 0)
                return;
        (void) kill(httpd_pid, sig);
        (void) waitpid(httpd_pid, NULL, 0);
        httpd_pid = -1;
}

/* The server's log: one JSON object per request. */
static json_t *server_requests(void) {
        _cleanup_free_ char *text = read_file(srv_log, NULL);
        json_t *a = json_array();
        char *save = NULL;

        ck_assert_ptr_nonnull(a);
        if (!text)
                return a;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                json_t *o = json_loads(line, 0, NULL);
                ck_assert_ptr_nonnull(o);
                ck_assert_int_eq(json_array_append_new(a, o), 0);
        }
        return a;
}

static size_t server_request_count(void) {
        json_t *a = server_requests();
        size_t n = json_array_size(a);

        json_decref(a);
        return n;
}

static const char *req_header(json_t *req, const char *name) {
        const char *k;
        json_t *v;

        json_object_foreach(json_object_get(req, "headers"), k, v)
                if (strcasecmp(k, name) == 0)
                        return json_string_value(v);
        return NULL;
}

/* --- the loop --- */

static void on_progress(Fetch *f, const FetchProgress *p, void *userdata) {
        Outcome *o = userdata;

        ck_assert(!o->done);
        if (p->bytes < o->last_bytes)
                o->progress_decreased = true;
        o->n_progress++;
        o->last_bytes = p->bytes;
        o->last_total = p->total;
        if (o->kill_server_at && p->bytes >= o->kill_server_at) {
                o->kill_server_at = 0;
                httpd_stop(SIGKILL);
        }
        if (o->cancel_in_progress) {
                o->cancel_in_progress = false;
                fetch_cancel(f);
                o->fetch = NULL;
        }
}

static void on_done(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata) {
        Outcome *o = userdata;

        ck_assert(!o->done);
        o->done = true;
        o->r = r;
        o->fetch = NULL;
        if (r >= 0) {
                ck_assert_ptr_nonnull(res);
                ck_assert_ptr_null(err);
                (void) snprintf(o->path, sizeof(o->path), "%s", res->path);
                (void) snprintf(o->sha256, sizeof(o->sha256), "%s", res->sha256);
                (void) snprintf(o->notice, sizeof(o->notice), "%s", strempty(res->notice));
                o->from_cache = res->from_cache;
                o->revalidated = res->revalidated;
        } else {
                ck_assert_ptr_null(res);
                ck_assert_ptr_nonnull(err);
                ck_assert_int_eq(err->code, r);
                (void) snprintf(o->error, sizeof(o->error), "%s", err->message);
        }
}

static void run_until_done(Outcome *o) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (!o->done) {
                ck_assert_msg(now_usec() < deadline, "timed out waiting for the done callback");
                ck_assert_int_ge(sd_event_run(event, 50 * USEC_PER_MSEC), 0);
        }
}

static void run_for(uint64_t usec) {
        uint64_t deadline = now_usec() + usec;

        while (now_usec() < deadline)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
}

static FetchRequest request(const char *url) {
        return (FetchRequest) { .url = url, .cache_dir = cache };
}

/* Starts req and runs the loop until done. Returns what fetch_start returned. */
static int fetch(const FetchRequest *req, Outcome *o) {
        HydraError err = {};
        int r;

        r = fetch_start(fetcher, req, on_progress, on_done, o, &o->fetch, &err);
        if (r < 0) {
                ck_assert_int_eq(err.code, r);
                (void) snprintf(o->error, sizeof(o->error), "%s", err.message);
                return r;
        }
        run_until_done(o);
        return 0;
}

static char *entry_file(const char *url, const char *name) {
        _cleanup_free_ char *e = fetch_cache_entry(cache, url);

        ck_assert_ptr_nonnull(e);
        return strf("%s/%s", e, name);
}

static void assert_no_data(const char *url) {
        _cleanup_free_ char *data = entry_file(url, "data"), *part = entry_file(url, "data.part");

        ck_assert_msg(!file_exists(data), "%s exists", data);
        ck_assert_msg(!file_exists(part), "%s exists", part);
}

/* meta.json of a finished download (written before the done callback; the wait is only a bound). */
static json_t *load_meta(const char *url) {
        _cleanup_free_ char *p = entry_file(url, "meta.json");
        uint64_t deadline = now_usec() + 5 * USEC_PER_SEC;
        json_t *m;

        while (!file_exists(p) && now_usec() < deadline)
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        m = json_load_file(p, 0, NULL);
        ck_assert_msg(m, "no meta.json for %s", url);
        return m;
}

/* hydrad's own log so far */
static char *our_log_text(void) {
        char *s;

        fflush(stderr);
        s = read_file(our_log, NULL);
        return s ?: strdup("");
}

/* --- fixture --- */

static void setup(void) {
        char t[] = "/tmp/test-fetch-XXXXXX";

        ck_assert_ptr_nonnull(mkdtemp(t));
        (void) snprintf(tmpdir, sizeof(tmpdir), "%s", t);
        (void) snprintf(root, sizeof(root), "%s/root", tmpdir);
        (void) snprintf(cache, sizeof(cache), "%s/cache", tmpdir);
        (void) snprintf(srv_log, sizeof(srv_log), "%s/httpd.log", tmpdir);
        (void) snprintf(port_file, sizeof(port_file), "%s/port", tmpdir);
        (void) snprintf(our_log, sizeof(our_log), "%s/hydrad.log", tmpdir);
        ck_assert_int_eq(mkdir(root, 0755), 0);

        log_set_max_level(LOG_DEBUG);
        if (!getenv("FETCH_TEST_DEBUG")) {
                _cleanup_close_ int fd = open(our_log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                ck_assert_int_ge(fd, 0);
                saved_stderr = fcntl(STDERR_FILENO, F_DUPFD_CLOEXEC, 3);
                ck_assert_int_ge(saved_stderr, 0);
                ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
        }

        ck_assert_int_ge(sd_event_new(&event), 0);
        ck_assert_int_ge(fetcher_new(event, &fetcher), 0);
}

static void teardown(void) {
        fetcher = fetcher_free(fetcher);
        event = sd_event_unref(event);
        httpd_stop(SIGTERM);
        if (saved_stderr >= 0) {
                fflush(stderr);
                (void) dup2(saved_stderr, STDERR_FILENO);
                saved_stderr = safe_close(saved_stderr);
        }
        (void) rm_rf(tmpdir);
}

/* --- tests --- */

START_TEST(test_first_download) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *data = NULL, *part = NULL, *got = NULL, *want = NULL,
                            *want_path = NULL;
        Outcome o = {};
        json_t *m;
        size_t n_got, n_want;

        make_file("a.bin", 300 * 1024, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_msg(o.r == 0, "%s", o.error);
        ck_assert_str_eq(o.sha256, sha);
        ck_assert(!o.from_cache);
        ck_assert(!o.revalidated);
        ck_assert_str_eq(o.notice, "");

        data = entry_file(url, "data");
        part = entry_file(url, "data.part");
        ck_assert_str_eq(o.path, data);
        ck_assert(!file_exists(part));
        want_path = strf("%s/a.bin", root);
        got = read_file(data, &n_got);
        want = read_file(want_path, &n_want);
        ck_assert_uint_eq(n_got, n_want);
        ck_assert(memcmp(got, want, n_want) == 0);

        m = load_meta(url);
        ck_assert_str_eq(json_string_value(json_object_get(m, "url")), url);
        ck_assert_str_eq(json_string_value(json_object_get(m, "sha256")), sha);
        ck_assert_int_eq(json_integer_value(json_object_get(m, "size")), 300 * 1024);
        ck_assert_ptr_nonnull(json_string_value(json_object_get(m, "etag")));
        ck_assert_ptr_nonnull(json_string_value(json_object_get(m, "last_modified")));
        ck_assert(json_is_integer(json_object_get(m, "time")));
        ck_assert_ptr_null(json_object_get(m, "part"));
        json_decref(m);

        ck_assert_uint_eq(server_request_count(), 1);
}
END_TEST

START_TEST(test_revalidate_304) {
        char sha[129];
        _cleanup_free_ char *url = NULL;
        Outcome o1 = {}, o2 = {};
        json_t *reqs, *last;

        make_file("a.bin", 200 * 1024, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert(o2.revalidated);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert_str_eq(o2.path, o1.path);

        reqs = server_requests();
        ck_assert_uint_eq(json_array_size(reqs), 2);
        last = json_array_get(reqs, 1);
        ck_assert_int_eq(json_integer_value(json_object_get(last, "status")), 304);
        ck_assert_ptr_nonnull(req_header(last, "If-None-Match"));
        ck_assert_ptr_nonnull(req_header(last, "If-Modified-Since"));
        ck_assert_ptr_null(req_header(json_array_get(reqs, 0), "If-None-Match"));
        json_decref(reqs);
}
END_TEST

START_TEST(test_changed_file_downloaded_again) {
        char sha1[129], sha2[129];
        _cleanup_free_ char *url = NULL;
        Outcome o1 = {}, o2 = {};

        make_file("a.bin", 100 * 1024, sha1, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_str_eq(o1.sha256, sha1);

        make_file("a.bin", 120 * 1024, sha2, NULL); /* other size: other ETag */
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(!o2.from_cache);
        ck_assert_str_eq(o2.sha256, sha2);
        ck_assert_int_eq(file_size(o2.path), 120 * 1024);
}
END_TEST

START_TEST(test_checksum_hit_no_request) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *sum = NULL;
        Outcome o1 = {}, o2 = {};

        make_file("a.bin", 100 * 1024, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        sum = strf("sha256:%s", sha);
        FetchRequest req = request(url);
        req.checksum = sum;

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert(!o1.from_cache);
        ck_assert_uint_eq(server_request_count(), 1);

        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert(!o2.revalidated);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert_uint_eq(server_request_count(), 1);

        /* even with the server gone */
        httpd_stop(SIGTERM);
        Outcome o3 = {};
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_msg(o3.r == 0, "%s", o3.error);
        ck_assert(o3.from_cache);
}
END_TEST

START_TEST(test_checksum_mismatch) {
        char sha[129];
        const char *wrong = "0000000000000000000000000000000000000000000000000000000000000bad";
        _cleanup_free_ char *url = NULL, *sum = NULL, *want = NULL;
        Outcome o = {};

        make_file("a.bin", 100 * 1024, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        sum = strf("sha256:%s", wrong);
        FetchRequest req = request(url);
        req.checksum = sum;

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_int_eq(o.r, -EBADMSG);
        want = strf("checksum mismatch for %s: expected sha256:%s, got sha256:%s", url, wrong, sha);
        ck_assert_str_eq(o.error, want);
        assert_no_data(url);
}
END_TEST

START_TEST(test_checksum_sha512) {
        char sha[129], sha512[129];
        _cleanup_free_ char *url = NULL, *sum = NULL;
        Outcome o = {};
        json_t *m;

        make_file("a.bin", 64 * 1024, sha, sha512);
        httpd_start(NULL);
        url = url_of("a.bin");
        sum = strf("sha512:%s", sha512);
        FetchRequest req = request(url);
        req.checksum = sum;

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_msg(o.r == 0, "%s", o.error);
        ck_assert_str_eq(o.sha256, sha);
        m = load_meta(url);
        ck_assert_str_eq(json_string_value(json_object_get(m, "sha512")), sha512);
        json_decref(m);
}
END_TEST

START_TEST(test_invalid_checksum_refused) {
        _cleanup_free_ char *url = NULL;
        Outcome o = {};

        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);
        req.checksum = "md5:d41d8cd98f00b204e9800998ecf8427e";
        ck_assert_int_eq(fetch(&req, &o), -EINVAL);
        ck_assert_ptr_nonnull(strstr(o.error, "invalid checksum"));
        req.checksum = "sha256:xyz";
        ck_assert_int_eq(fetch(&req, &o), -EINVAL);
        ck_assert_uint_eq(server_request_count(), 0);
}
END_TEST

static void sums_case(bool use_512) {
        char sha[129], sha512[129], other[129];
        _cleanup_free_ char *url = NULL, *sums_url = NULL, *text = NULL;
        const char *sums_name = use_512 ? "SHA512SUMS" : "SHA256SUMS";
        Outcome o1 = {}, o2 = {};
        json_t *m;

        make_file("disk.qcow2", 150 * 1024, sha, sha512);
        make_file("other.qcow2", 10 * 1024, use_512 ? NULL : other, use_512 ? other : NULL);
        text = strf("%s  other.qcow2\n%s *disk.qcow2\n", other, use_512 ? sha512 : sha);
        write_text(sums_name, text);
        httpd_start(NULL);
        url = url_of("disk.qcow2");
        sums_url = url_of(sums_name);
        FetchRequest req = request(url);
        req.sums_url = sums_url;

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert_str_eq(o1.sha256, sha);
        m = load_meta(url);
        if (use_512)
                ck_assert_str_eq(json_string_value(json_object_get(m, "sha512")), sha512);
        json_decref(m);

        /* second time: the SUMS file again, then no request for the file itself */
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert_uint_eq(server_request_count(), 3);
}

START_TEST(test_sums_sha256) {
        sums_case(false);
}
END_TEST

START_TEST(test_sums_sha512) {
        sums_case(true);
}
END_TEST

START_TEST(test_sums_mismatch_and_missing) {
        char sha[129];
        const char *wrong = "1111111111111111111111111111111111111111111111111111111111111111";
        _cleanup_free_ char *url = NULL, *sums_url = NULL, *text = NULL, *missing_url = NULL;
        Outcome o1 = {}, o2 = {}, o3 = {};

        make_file("disk.raw", 50 * 1024, sha, NULL);
        make_file("nolisted.raw", 10, NULL, NULL);
        text = strf("SHA256 (disk.raw) = %s\n", wrong);
        write_text("SHA256SUMS", text);
        httpd_start(NULL);
        url = url_of("disk.raw");
        sums_url = url_of("SHA256SUMS");

        FetchRequest req = request(url);
        req.sums_url = sums_url;
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_eq(o1.r, -EBADMSG);
        ck_assert_ptr_nonnull(strstr(o1.error, wrong));
        ck_assert_ptr_nonnull(strstr(o1.error, sha));
        assert_no_data(url);

        missing_url = url_of("nolisted.raw");
        req.url = missing_url;
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_int_eq(o2.r, -ENOENT);
        ck_assert_ptr_nonnull(strstr(o2.error, "nolisted.raw"));

        req.url = url;
        req.sums_url = "http://127.0.0.1:1/SHA256SUMS"; /* nothing listens there, no cache: an error */
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_int_lt(o3.r, 0);
}
END_TEST

START_TEST(test_missing_404) {
        _cleanup_free_ char *url = NULL, *want = NULL;
        Outcome o = {};

        httpd_start(NULL);
        url = url_of("missing.bin");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_int_eq(o.r, -ENOENT);
        want = strf("HTTP 404 from %s", url);
        ck_assert_str_eq(o.error, want);
        assert_no_data(url);
}
END_TEST

START_TEST(test_resume_after_drop) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *args[] = { "--drop-after", "100000", NULL };
        Outcome o1 = {}, o2 = {};
        json_t *reqs, *second;

        make_file("a.bin", 300 * 1024, sha, NULL);
        httpd_start(args);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_lt(o1.r, 0);
        ck_assert_msg(strstr(o1.error, "interrupted"), "%s", o1.error);
        ck_assert_int_eq(file_size(part), 100000);

        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert(!file_exists(part));

        reqs = server_requests();
        ck_assert_uint_eq(json_array_size(reqs), 2);
        second = json_array_get(reqs, 1);
        ck_assert_str_eq(json_string_value(json_object_get(second, "range")), "bytes=100000-");
        ck_assert_int_eq(json_integer_value(json_object_get(second, "status")), 206);
        ck_assert_ptr_nonnull(req_header(second, "If-Range"));
        json_decref(reqs);
}
END_TEST

START_TEST(test_resume_server_ignores_range) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *args[] = { "--drop-after", "50000", "--no-range", NULL };
        Outcome o1 = {}, o2 = {};
        json_t *reqs, *second;

        make_file("a.bin", 200 * 1024, sha, NULL);
        httpd_start(args);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_lt(o1.r, 0);
        ck_assert_int_eq(file_size(part), 50000);

        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert_int_eq(file_size(o2.path), 200 * 1024);

        reqs = server_requests();
        second = json_array_get(reqs, 1);
        ck_assert_str_eq(json_string_value(json_object_get(second, "range")), "bytes=50000-");
        ck_assert_int_eq(json_integer_value(json_object_get(second, "status")), 200);
        json_decref(reqs);
}
END_TEST

START_TEST(test_resume_after_server_killed) {
        char sha[129], sha512[129];
        _cleanup_free_ char *url = NULL, *part = NULL, *sum = NULL;
        const char *slow[] = { "--slow", "200000", NULL };
        int old_port;
        off_t kept;
        Outcome o1 = { .kill_server_at = 40000 }, o2 = {};
        json_t *reqs, *last;

        make_file("a.bin", 400 * 1024, sha, sha512);
        httpd_start(slow);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        sum = strf("sha512:%s", sha512); /* resumes hash the .part with the expected algorithm too */
        FetchRequest req = request(url);
        req.checksum = sum;

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_lt(o1.r, 0);
        ck_assert_int_eq(httpd_pid, -1);
        kept = file_size(part);
        ck_assert_int_ge(kept, 40000);
        ck_assert_int_lt(kept, 400 * 1024);

        old_port = port;
        httpd_start_on(old_port, NULL);
        ck_assert_int_eq(port, old_port);

        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert(!file_exists(part));

        reqs = server_requests();
        last = json_array_get(reqs, json_array_size(reqs) - 1);
        ck_assert_int_eq(json_integer_value(json_object_get(last, "status")), 206);
        ck_assert_ptr_nonnull(json_string_value(json_object_get(last, "range")));
        json_decref(reqs);
}
END_TEST

START_TEST(test_token_header) {
        _cleanup_free_ char *url = NULL, *text = NULL;
        const char *args[] = { "--require-token", TOKEN, NULL };
        Outcome o1 = {}, o2 = {}, o3 = {};
        json_t *reqs;

        make_file("a.bin", 20 * 1024, NULL, NULL);
        httpd_start(args);
        url = url_of("a.bin");
        FetchRequest req = request(url);

        /* no token: 401, clearly */
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_eq(o1.r, -EACCES);
        ck_assert_msg(strstr(o1.error, "HTTP 401 from ") && strstr(o1.error, "credentials required"), "%s",
                      o1.error);

        /* a wrong token: refused, and not quoted */
        req.token = "wrong-token-abcdef";
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_int_eq(o2.r, -EACCES);
        ck_assert_ptr_null(strstr(o2.error, "wrong-token-abcdef"));

        req.token = TOKEN;
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_msg(o3.r == 0, "%s", o3.error);

        reqs = server_requests();
        ck_assert_uint_eq(json_array_size(reqs), 3);
        ck_assert_ptr_null(req_header(json_array_get(reqs, 0), "PRIVATE-TOKEN"));
        ck_assert_str_eq(req_header(json_array_get(reqs, 2), "PRIVATE-TOKEN"), TOKEN);
        json_decref(reqs);

        text = our_log_text();
        ck_assert_ptr_nonnull(strstr(text, "Downloading")); /* the capture works */
        ck_assert_ptr_null(strstr(text, TOKEN));
        ck_assert_ptr_null(strstr(text, "wrong-token-abcdef"));
}
END_TEST

START_TEST(test_token_custom_header) {
        _cleanup_free_ char *url = NULL;
        const char *args[] = { "--require-token", TOKEN, "--token-header", "X-Api-Key", NULL };
        Outcome o = {};
        json_t *reqs;

        make_file("a.bin", 1024, NULL, NULL);
        httpd_start(args);
        url = url_of("a.bin");
        FetchRequest req = request(url);
        req.token = TOKEN;
        req.token_header = "X-Api-Key";
        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_msg(o.r == 0, "%s", o.error);
        reqs = server_requests();
        ck_assert_str_eq(req_header(json_array_get(reqs, 0), "X-Api-Key"), TOKEN);
        json_decref(reqs);

        req.token_header = "Bad: Header";
        Outcome o2 = {};
        ck_assert_int_eq(fetch(&req, &o2), -EINVAL);
        ck_assert_ptr_null(strstr(o2.error, TOKEN));
}
END_TEST

START_TEST(test_redirects) {
        char sha[129];
        _cleanup_free_ char *same = NULL, *other = NULL, *text = NULL;
        const char *args[] = { "--require-token", TOKEN, NULL };
        Outcome o1 = {}, o2 = {};
        json_t *reqs, *r;

        make_file("a.bin", 30 * 1024, sha, NULL);
        httpd_start(args);

        /* same origin: the token follows */
        same = url_of("_redirect/same/a.bin");
        FetchRequest req = request(same);
        req.token = TOKEN;
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert_str_eq(o1.sha256, sha);

        /* another host name: the token stays behind, so that server says 401 */
        other = url_of("_redirect/other/a.bin");
        req.url = other;
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_int_eq(o2.r, -EACCES);
        ck_assert_msg(strstr(o2.error, other), "%s", o2.error);

        reqs = server_requests();
        ck_assert_uint_eq(json_array_size(reqs), 4);
        r = json_array_get(reqs, 1);
        ck_assert_str_eq(json_string_value(json_object_get(r, "path")), "/a.bin");
        ck_assert_str_eq(req_header(r, "PRIVATE-TOKEN"), TOKEN);
        r = json_array_get(reqs, 2);
        ck_assert_str_eq(req_header(r, "PRIVATE-TOKEN"), TOKEN);
        r = json_array_get(reqs, 3);
        ck_assert_ptr_nonnull(strstr(req_header(r, "Host"), "localhost"));
        ck_assert_ptr_null(req_header(r, "PRIVATE-TOKEN"));
        json_decref(reqs);

        text = our_log_text();
        ck_assert_ptr_null(strstr(text, TOKEN));
}
END_TEST

START_TEST(test_basic_auth) {
        _cleanup_free_ char *url = NULL, *text = NULL, *cred_url = NULL, *redacted = NULL;
        const char *args[] = { "--require-basic", "alice:" PASSWORD, NULL };
        Outcome o1 = {}, o2 = {}, o3 = {};
        json_t *reqs;

        make_file("a.bin", 10 * 1024, NULL, NULL);
        httpd_start(args);
        url = url_of("a.bin");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_int_eq(o1.r, -EACCES);
        ck_assert_msg(strstr(o1.error, "HTTP 401 from"), "%s", o1.error);

        req.user = "alice";
        req.password = PASSWORD;
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        reqs = server_requests();
        ck_assert_ptr_nonnull(req_header(json_array_get(reqs, 1), "Authorization"));
        json_decref(reqs);

        /* credentials in the URL: same cache entry, and never shown */
        cred_url = strf("http://alice:%s@127.0.0.1:%d/a.bin", PASSWORD, port);
        redacted = url_display(cred_url);
        ck_assert_str_eq(redacted, url);
        FetchRequest req2 = request(cred_url);
        ck_assert_int_eq(fetch(&req2, &o3), 0);
        ck_assert_msg(o3.r == 0, "%s", o3.error);
        ck_assert_str_eq(o3.path, o2.path);
        ck_assert(o3.revalidated);

        text = our_log_text();
        ck_assert_ptr_null(strstr(text, PASSWORD));
}
END_TEST

START_TEST(test_file_url) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *src = NULL;
        Outcome o1 = {}, o2 = {}, o3 = {};

        make_file("local.img", 100 * 1024, sha, NULL);
        src = strf("%s/local.img", root);
        url = strf("file://%s", src);
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert_str_eq(o1.sha256, sha);
        ck_assert(!o1.from_cache);

        /* unchanged: libcurl's time condition, no copy */
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert(o2.revalidated);

        /* a missing file */
        _cleanup_free_ char *missing = strf("file://%s/nope.img", root);
        req.url = missing;
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_int_eq(o3.r, -ENOENT);
        assert_no_data(missing);
}
END_TEST

/* libcurl cannot pause a file:// transfer: one larger than the 32 MiB the worker may have in hand must not fail
 * when the worker falls behind (here: hashing with SHA-512 as well). */
START_TEST(test_file_url_large) {
        char sha[129], sha512[129];
        _cleanup_free_ char *url = NULL, *src = NULL, *sum = NULL;
        Outcome o = {};

        make_file("large.img", 80 * 1024 * 1024, sha, sha512);
        src = strf("%s/large.img", root);
        url = strf("file://%s", src);
        sum = strf("sha512:%s", sha512);
        FetchRequest req = request(url);
        req.checksum = sum;

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_msg(o.r == 0, "%s", o.error);
        ck_assert_str_eq(o.sha256, sha);
        ck_assert(!o.from_cache);
}
END_TEST

START_TEST(test_progress) {
        _cleanup_free_ char *url = NULL;
        const char *slow[] = { "--slow", "400000", NULL };
        Outcome o = {};

        make_file("a.bin", 300 * 1024, NULL, NULL);
        httpd_start(slow);
        url = url_of("a.bin");
        FetchRequest req = request(url);

        uint64_t t0 = now_usec();
        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_msg(o.r == 0, "%s", o.error);
        uint64_t elapsed = now_usec() - t0;
        ck_assert_uint_ge(o.n_progress, 2);
        /* at most every 250 ms, plus the first one */
        ck_assert_uint_le(o.n_progress, 1 + elapsed / (250 * USEC_PER_MSEC));
        ck_assert(!o.progress_decreased);
        ck_assert_uint_eq(o.last_total, 300 * 1024);
        ck_assert_uint_gt(o.last_bytes, 0);
        ck_assert_uint_le(o.last_bytes, 300 * 1024);
}
END_TEST

START_TEST(test_cancel_in_progress_callback) {
        _cleanup_free_ char *url = NULL, *part = NULL, *entry = NULL;
        const char *slow[] = { "--slow", "100000", NULL };
        Outcome o = { .cancel_in_progress = true };

        make_file("a.bin", 300 * 1024, NULL, NULL);
        httpd_start(slow);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);
        HydraError err = {};

        ck_assert_int_eq(fetch_start(fetcher, &req, on_progress, on_done, &o, &o.fetch, &err), 0);
        run_for(600 * USEC_PER_MSEC);
        ck_assert_uint_eq(o.n_progress, 1);
        ck_assert(!o.done);
        ck_assert(!file_exists(part));
}
END_TEST

/* Runs the loop until path exists (or not), within RUN_BOUND_USEC. */
static void wait_file(const char *path, bool exists) {
        uint64_t deadline = now_usec() + RUN_BOUND_USEC;

        while (file_exists(path) != exists) {
                ck_assert_msg(now_usec() < deadline, "'%s' %s", path, exists ? "never appeared" : "never went");
                ck_assert_int_ge(sd_event_run(event, 1 * USEC_PER_MSEC), 0);
        }
}

START_TEST(test_cancel_from_loop) {
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *slow[] = { "--slow", "100000", NULL };
        Outcome o = {};
        uint64_t deadline;

        make_file("a.bin", 300 * 1024, NULL, NULL);
        httpd_start(slow);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);
        HydraError err = {};

        ck_assert_int_eq(fetch_start(fetcher, &req, on_progress, on_done, &o, &o.fetch, &err), 0);
        deadline = now_usec() + RUN_BOUND_USEC;
        while (o.n_progress == 0) {
                ck_assert(now_usec() < deadline);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        /* data.part is created and removed by the fetcher's disk worker, not by the loop: wait for it */
        wait_file(part, true);
        fetch_cancel(o.fetch);
        wait_file(part, false);
        run_for(300 * USEC_PER_MSEC);
        ck_assert(!o.done);

        /* cancel right after start, outside of any callback */
        Outcome o2 = {};
        ck_assert_int_eq(fetch_start(fetcher, &req, on_progress, on_done, &o2, &o2.fetch, &err), 0);
        fetch_cancel(o2.fetch);
        run_for(100 * USEC_PER_MSEC);
        ck_assert(!o2.done);
}
END_TEST

/* fetcher_wait() after a fetch_cancel(): once it returns, the worker has done what the cancelled fetch queued
 * (its .part is gone), without running the loop: a removal of the cache entry on another thread comes after. */
START_TEST(test_cancel_then_wait) {
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *slow[] = { "--slow", "100000", NULL };
        Outcome o = {};
        uint64_t deadline, ticket;

        ck_assert_uint_eq(fetcher_ticket(fetcher), 0); /* nothing queued yet */
        make_file("a.bin", 300 * 1024, NULL, NULL);
        httpd_start(slow);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);
        HydraError err = {};

        ck_assert_int_eq(fetch_start(fetcher, &req, on_progress, on_done, &o, &o.fetch, &err), 0);
        deadline = now_usec() + RUN_BOUND_USEC;
        while (o.n_progress == 0) {
                ck_assert(now_usec() < deadline);
                ck_assert_int_ge(sd_event_run(event, 10 * USEC_PER_MSEC), 0);
        }
        wait_file(part, true);
        fetch_cancel(o.fetch);
        ticket = fetcher_ticket(fetcher);
        ck_assert_uint_gt(ticket, 0);
        fetcher_wait(fetcher, ticket);
        ck_assert_msg(access(part, F_OK) < 0, "%s is still there", part);
        run_for(100 * USEC_PER_MSEC);
        ck_assert(!o.done);
}
END_TEST

START_TEST(test_unreachable_uses_cache) {
        char sha[129];
        _cleanup_free_ char *url = NULL;
        Outcome o1 = {}, o2 = {};

        make_file("a.bin", 50 * 1024, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);

        httpd_stop(SIGTERM);
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert(!o2.revalidated);
        ck_assert_str_eq(o2.sha256, sha);
        ck_assert_ptr_nonnull(strstr(o2.notice, "unreachable"));

        /* without a cached copy it is an error */
        _cleanup_free_ char *other = url_of("b.bin");
        Outcome o3 = {};
        req.url = other;
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_int_eq(o3.r, -ECONNREFUSED);
        ck_assert_msg(strstr(o3.error, other), "%s", o3.error);
}
END_TEST

START_TEST(test_stalled_server) {
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *slow[] = { "--slow", "200", NULL };
        Outcome o = {};

        fetcher_set_low_speed(fetcher, 1024, 1);
        make_file("a.bin", 100 * 1024, NULL, NULL);
        httpd_start(slow);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch(&req, &o), 0);
        ck_assert_int_eq(o.r, -ETIMEDOUT);
        ck_assert_msg(strstr(o.error, "interrupted"), "%s", o.error);
        ck_assert(file_exists(part));
}
END_TEST

START_TEST(test_empty_file_and_busy) {
        char sha[129];
        _cleanup_free_ char *url = NULL;
        Outcome o = {}, o2 = {};
        HydraError err = {};
        Fetch *f = NULL;

        make_file("empty", 0, sha, NULL);
        httpd_start(NULL);
        url = url_of("empty");
        FetchRequest req = request(url);

        ck_assert_int_eq(fetch_start(fetcher, &req, NULL, on_done, &o, &f, &err), 0);
        ck_assert_int_eq(fetch_start(fetcher, &req, NULL, on_done, &o2, NULL, &err), -EBUSY);
        run_until_done(&o);
        ck_assert_msg(o.r == 0, "%s", o.error);
        ck_assert_str_eq(o.sha256, sha);
        ck_assert_int_eq(file_size(o.path), 0);
}
END_TEST

START_TEST(test_cache_key) {
        _cleanup_free_ char *a = NULL, *b = NULL, *c = NULL, *d = NULL;

        a = fetch_cache_entry("/c", "http://user:secret@host/x");
        b = fetch_cache_entry("/c", "http://host/x");
        ck_assert_str_eq(a, b);
        ck_assert_ptr_null(strstr(a, "secret"));
        ck_assert_uint_eq(strlen(a), strlen("/c/") + 64);

        /* the query is part of the key (it may name another file), but no token shows in the name */
        c = fetch_cache_entry("/c", "http://host/x?private_token=s3cr-one");
        d = fetch_cache_entry("/c", "http://host/x?private_token=s3cr-two");
        ck_assert_str_ne(c, d);
        ck_assert_str_ne(c, b);
        ck_assert_ptr_null(strstr(c, "s3cr"));
        ck_assert_ptr_null(strstr(c, "private_token"));
}
END_TEST

/* Tokens in a URL's query (signed URLs, ?private_token=): in the request, never in a message, the log or
 * meta.json, which is private. Also the SUMS url's, and a redirect's Location. */
START_TEST(test_query_secrets) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *sums = NULL, *missing = NULL, *meta_path = NULL, *text = NULL,
                            *meta_text = NULL, *shown = NULL, *paths = NULL;
        const char *args[] = { "--redirect-query", "X-Amz-Signature=s3cr-redirect", NULL };
        Outcome o1 = {}, o2 = {}, o3 = {};
        struct stat st;
        json_t *m, *reqs;

        make_file("q.bin", 20 * 1024, sha, NULL);
        text = strf("%s  q.bin\n", sha);
        write_text("SHA256SUMS", text);
        text = mfree(text);
        httpd_start(args);

        url = url_of("_redirect/query/q.bin?private_token=s3cr-token&X-Amz-Signature=s3cr-sig");
        sums = url_of("SHA256SUMS?X-Amz-Signature=s3cr-sums");
        FetchRequest req = request(url);
        req.sums_url = sums;
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        ck_assert_str_eq(o1.sha256, sha);

        /* the requests had the URLs whole */
        reqs = server_requests();
        paths = json_dumps(reqs, 0);
        ck_assert_ptr_nonnull(strstr(paths, "/SHA256SUMS?X-Amz-Signature=s3cr-sums"));
        ck_assert_ptr_nonnull(
                strstr(paths, "/_redirect/query/q.bin?private_token=s3cr-token&X-Amz-Signature=s3cr-sig"));
        ck_assert_ptr_nonnull(strstr(paths, "/q.bin?X-Amz-Signature=s3cr-redirect"));
        json_decref(reqs);

        meta_path = entry_file(url, "meta.json");
        m = load_meta(url);
        shown = strf("http://127.0.0.1:%d/_redirect/query/q.bin?private_token=REDACTED&X-Amz-Signature=REDACTED", port);
        ck_assert_str_eq(json_string_value(json_object_get(m, "url")), shown);
        json_decref(m);
        ck_assert_int_eq(stat(meta_path, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0600);

        /* a 404: the error shows the parameter names only */
        missing = url_of("nope.bin?private_token=s3cr-token");
        FetchRequest req2 = request(missing);
        ck_assert_int_eq(fetch(&req2, &o2), 0);
        ck_assert_int_eq(o2.r, -ENOENT);
        ck_assert_msg(strstr(o2.error, "HTTP 404") && strstr(o2.error, "/nope.bin?private_token=REDACTED"), "%s",
                      o2.error);

        /* meta.json as an older hydrad left it (the URL whole, readable by all): rewritten when next read */
        text = strf("{\"url\": \"%s\", \"size\": 20480, \"sha256\": \"%s\"}", url, sha);
        ck_assert_int_eq(unlink(meta_path), 0);
        {
                _cleanup_close_ int fd = open(meta_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
                ck_assert_int_ge(fd, 0);
                ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t) strlen(text));
                ck_assert_int_eq(fchmod(fd, 0644), 0);
        }
        text = mfree(text);
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_msg(o3.r == 0, "%s", o3.error);
        ck_assert(o3.from_cache);
        ck_assert_int_eq(stat(meta_path, &st), 0);
        ck_assert_uint_eq(st.st_mode & 0777, 0600);
        meta_text = read_file(meta_path, NULL);
        ck_assert_ptr_nonnull(strstr(meta_text, "private_token=REDACTED"));
        ck_assert_msg(!strstr(meta_text, "s3cr"), "%s", meta_text);

        text = our_log_text();
        ck_assert_ptr_nonnull(strstr(text, "private_token=REDACTED"));
        ck_assert_ptr_nonnull(strstr(text, "/q.bin?X-Amz-Signature=REDACTED")); /* the redirect, logged */
        ck_assert_msg(!strstr(text, "s3cr"), "%s", text);
        ck_assert_msg(!strstr(o1.error, "s3cr") && !strstr(o2.error, "s3cr") && !strstr(o1.notice, "s3cr"), "%s",
                      o2.error);
}
END_TEST

static void on_done_free_fetcher(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata) {
        on_done(f, r, res, err, userdata);
        fetcher = fetcher_free(fetcher);
}

START_TEST(test_free_fetcher_in_done) {
        char sha[129];
        _cleanup_free_ char *url = NULL, *meta = NULL;
        Outcome o = {};
        HydraError err = {};
        json_t *m;

        make_file("a.bin", 3 * 1024 * 1024 + 17, sha, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        FetchRequest req = request(url);
        ck_assert_int_eq(fetch_start(fetcher, &req, NULL, on_done_free_fetcher, &o, &o.fetch, &err), 0);
        run_until_done(&o);
        ck_assert_msg(o.r == 0, "%s", o.error);
        ck_assert_str_eq(o.sha256, sha);
        ck_assert_ptr_null(fetcher);

        /* freed from the callback: data and meta.json are in place, and nothing ran after */
        meta = entry_file(url, "meta.json");
        m = json_load_file(meta, 0, NULL);
        ck_assert_ptr_nonnull(m);
        ck_assert_str_eq(json_string_value(json_object_get(m, "sha256")), sha);
        json_decref(m);
}
END_TEST

START_TEST(test_concurrent_fetches) {
        char sha[4][129];
        Outcome o[4] = {};
        char *urls[4];
        HydraError err = {};
        uint64_t deadline;

        httpd_start(NULL);
        for (int i = 0; i < 4; i++) {
                _cleanup_free_ char *name = strf("f%d.bin", i);
                make_file(name, (size_t) (i + 1) * 700 * 1024 + (size_t) i, sha[i], NULL);
                urls[i] = url_of(name);
                FetchRequest req = request(urls[i]);
                ck_assert_int_eq(fetch_start(fetcher, &req, on_progress, on_done, &o[i], &o[i].fetch, &err), 0);
        }
        deadline = now_usec() + RUN_BOUND_USEC;
        while (!(o[0].done && o[1].done && o[2].done && o[3].done)) {
                ck_assert(now_usec() < deadline);
                ck_assert_int_ge(sd_event_run(event, 50 * USEC_PER_MSEC), 0);
        }
        for (int i = 0; i < 4; i++) {
                ck_assert_msg(o[i].r == 0, "%s", o[i].error);
                ck_assert_str_eq(o[i].sha256, sha[i]);
                ck_assert_int_eq(file_size(o[i].path), (i + 1) * 700 * 1024 + i);
                free(urls[i]);
        }
}
END_TEST

START_TEST(test_interrupted_update_uses_cache) {
        char sha1[129];
        _cleanup_free_ char *url = NULL, *part = NULL;
        const char *args[] = { "--drop-after", "100000", NULL };
        Outcome o1 = {}, o2 = {}, o3 = {};

        make_file("a.bin", 200 * 1024, sha1, NULL);
        httpd_start(NULL);
        url = url_of("a.bin");
        part = entry_file(url, "data.part");
        FetchRequest req = request(url);
        ck_assert_int_eq(fetch(&req, &o1), 0);
        ck_assert_msg(o1.r == 0, "%s", o1.error);
        json_decref(load_meta(url)); /* wait for the worker's meta.json */

        /* a newer version, and a server that drops the connection once */
        httpd_stop(SIGTERM);
        make_file("a.bin", 300 * 1024, NULL, NULL);
        httpd_start_on(port, args);
        ck_assert_int_eq(fetch(&req, &o2), 0);
        ck_assert_msg(o2.r == 0, "%s", o2.error);
        ck_assert(o2.from_cache);
        ck_assert_str_eq(o2.sha256, sha1);
        ck_assert_ptr_nonnull(strstr(o2.notice, "interrupted"));
        ck_assert_int_eq(file_size(part), 100000);

        /* next time the newer version is resumed and replaces the old one */
        ck_assert_int_eq(fetch(&req, &o3), 0);
        ck_assert_msg(o3.r == 0, "%s", o3.error);
        ck_assert(!o3.from_cache);
        ck_assert_int_eq(file_size(o3.path), 300 * 1024);
        ck_assert(!file_exists(part));
}
END_TEST

static Suite *fetch_suite(void) {
        Suite *s = suite_create("fetch");
        TCase *tc;

        tc = tcase_create("pure");
        tcase_add_test(tc, test_cache_key);
        suite_add_tcase(s, tc);

        tc = tcase_create("cache");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_first_download);
        tcase_add_test(tc, test_revalidate_304);
        tcase_add_test(tc, test_changed_file_downloaded_again);
        tcase_add_test(tc, test_checksum_hit_no_request);
        tcase_add_test(tc, test_checksum_mismatch);
        tcase_add_test(tc, test_checksum_sha512);
        tcase_add_test(tc, test_invalid_checksum_refused);
        tcase_add_test(tc, test_sums_sha256);
        tcase_add_test(tc, test_sums_sha512);
        tcase_add_test(tc, test_sums_mismatch_and_missing);
        tcase_add_test(tc, test_missing_404);
        tcase_add_test(tc, test_file_url);
        tcase_add_test(tc, test_file_url_large);
        tcase_add_test(tc, test_unreachable_uses_cache);
        tcase_add_test(tc, test_empty_file_and_busy);
        tcase_add_test(tc, test_free_fetcher_in_done);
        tcase_add_test(tc, test_concurrent_fetches);
        suite_add_tcase(s, tc);

        tc = tcase_create("resume");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_resume_after_drop);
        tcase_add_test(tc, test_resume_server_ignores_range);
        tcase_add_test(tc, test_resume_after_server_killed);
        tcase_add_test(tc, test_stalled_server);
        tcase_add_test(tc, test_interrupted_update_uses_cache);
        suite_add_tcase(s, tc);

        tc = tcase_create("auth");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_token_header);
        tcase_add_test(tc, test_token_custom_header);
        tcase_add_test(tc, test_redirects);
        tcase_add_test(tc, test_basic_auth);
        tcase_add_test(tc, test_query_secrets);
        suite_add_tcase(s, tc);

        tc = tcase_create("progress");
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 30);
        tcase_add_test(tc, test_progress);
        tcase_add_test(tc, test_cancel_in_progress_callback);
        tcase_add_test(tc, test_cancel_from_loop);
        tcase_add_test(tc, test_cancel_then_wait);
        suite_add_tcase(s, tc);

        return s;
}

int main(void) {
        SRunner *sr = srunner_create(fetch_suite());
        int failed;

        srunner_run_all(sr, CK_NORMAL);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
