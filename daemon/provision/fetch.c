/* SPDX-License-Identifier: MIT */
/* libcurl's multi interface on sd-event, the way systemd's src/import/curl-util.c glues them: curl tells us which
 * sockets to watch (CURLMOPT_SOCKETFUNCTION: one io source per socket) and when to wake it up
 * (CURLMOPT_TIMERFUNCTION: one timer); we hand readiness back with curl_multi_socket_action() and collect
 * finished transfers with curl_multi_info_read().
 *
 * The bytes themselves go to a worker thread (one per Fetcher) that writes, hashes and fsyncs them: SHA-256 runs at
 * about the speed of a local network, and a disk may stall, so doing either on the loop would halve throughput
 * and block every VM's QMP for as long. The hand-over is the one gRPC uses (DESIGN.md): a mutex-protected queue
 * to the worker, and an eventfd back to the loop, where everything else happens. When the worker falls behind,
 * the transfer is paused (CURL_WRITEFUNC_PAUSE) instead of the loop waiting.

 *
 * A Fetch goes through up to three steps: the SUMS file (into memory), hashing an existing .part (resume, on the
 * worker), the download itself. Each ends on the loop, outside of libcurl's callbacks, where the next one starts
 * or the done callback runs. */
#include <ctype.h>
#include <curl/curl.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fetch.h"
#include "log.h"
#include "macro.h"
#include "store.h"
#include "url.h"

#define USEC_PER_SEC 1000000ULL
#define USEC_PER_MSEC 1000ULL

#define FETCH_BUFFER_SIZE (512L * 1024L)            /* CURLOPT_BUFFERSIZE: fewer, larger recv() calls */
#define FETCH_WRITE_BUFFER_SIZE (1024 * 1024)       /* libcurl's 16 KiB pieces, gathered for one write() */
#define FETCH_WRITE_BUFFERS 32                      /* in flight to the worker; then the transfer pauses */
#define FETCH_MAX_REDIRECTS 5
#define FETCH_SUMS_MAX (1024 * 1024)                /* a SUMS file larger than this is not one */
#define FETCH_HASH_CHUNK (4 * 1024 * 1024)          /* read size when hashing an existing .part */
#define FETCH_PROGRESS_USEC (250 * USEC_PER_MSEC)
#define FETCH_CONNECT_TIMEOUT_SEC 30L
#define FETCH_USER_AGENT "hydrad/0.1"
#define FETCH_DEFAULT_TOKEN_HEADER "PRIVATE-TOKEN"
#define FETCH_META_MAX (64 * 1024)

typedef enum DigestAlgo {
        DIGEST_NONE,
        DIGEST_SHA256,
        DIGEST_SHA512,
} DigestAlgo;

static const char *const digest_algo_table[] = {
        [DIGEST_NONE] = NULL,
        [DIGEST_SHA256] = "sha256",
        [DIGEST_SHA512] = "sha512",
};

typedef enum FetchPhase {
        PHASE_SUMS,      /* the SUMS file, into memory */
        PHASE_HASH_PART, /* the worker hashes what an interrupted download left */
        PHASE_MAIN,      /* the file itself, into data.part */
        PHASE_FINISH,    /* the transfer ended; the worker writes (and syncs) what is left of it */
        PHASE_DONE,      /* result known, delivered from a defer source */
} FetchPhase;

/* What the write callback does with the body of the current response, decided at its first byte. */
typedef enum BodyMode {
        BODY_UNKNOWN,
        BODY_WRITE,
        BODY_DISCARD, /* a redirect's body */
        BODY_ABORT,   /* an error status (reported from the status) or a local failure (from f->error) */
} BodyMode;

typedef struct CurlIo {
        Fetcher *fetcher;
        sd_event_source *source;
        struct CurlIo *prev, *next;
} CurlIo;

typedef struct Buffer {
        struct Buffer *next;
        size_t len;
        char data[FETCH_WRITE_BUFFER_SIZE];
} Buffer;

/* data.part as the worker sees it. */
typedef struct Sink {
        unsigned n_ref;        /* under Fetcher.lock: the Fetch's, plus one per queued job */
        atomic_bool cancelled; /* the .part is gone: skip what is left */
        Fetch *fetch;          /* loop only; NULL once the Fetch let go */
        int fd;                /* O_APPEND */
        EVP_MD_CTX *sha256;
        EVP_MD_CTX *sha512;    /* only when the expected checksum is a sha512 */
        /* The worker's while jobs are queued; the loop's once a JOB_HASH_FILE or JOB_FINISH came back. */
        uint64_t size;         /* bytes written (or hashed) */
        int error;             /* the first failure, negative errno */
        const char *error_op;
} Sink;

typedef enum JobType {
        JOB_DATA,      /* write and hash a buffer */
        JOB_HASH_FILE, /* hash the first size bytes of the file; reported back */
        JOB_FINISH,    /* a barrier: everything before it is written (and synced, if asked); reported back */
} JobType;

typedef struct Job {
        struct Job *next;
        JobType type;
        Sink *sink;
        Buffer *buf;   /* JOB_DATA */
        uint64_t size; /* JOB_HASH_FILE */
        bool fsync;    /* JOB_FINISH */
} Job;

struct Fetcher {
        unsigned n_ref;   /* the owner's, plus one per handler running (a done callback may free us) */
        bool dead;        /* fetcher_free() ran: curl and the sources are gone, only the struct is left */
        unsigned in_curl; /* inside libcurl (socket_action, pause): its callbacks may run */
        sd_event *event;
        CURLM *multi;
        sd_event_source *timer;
        CurlIo *ios;
        Fetch *fetches;
        long low_speed_limit;
        long low_speed_time;

        /* The disk worker, started with the first download. The fields after lock are shared with it. */
        bool worker_running;
        pthread_t worker;
        int efd; /* worker → loop: a job came back, or a buffer is free again */
        sd_event_source *efd_source;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stop;
        Job *queue, **queue_tail;
        Job *returned, **returned_tail;
        Buffer *free_buffers;
        unsigned n_buffers;
        bool want_buffer; /* a transfer is paused until a buffer comes back */
};

struct Fetch {
        Fetcher *fetcher; /* borrowed; NULL once detached */
        Fetch *prev, *next;
        FetchPhase phase;
        bool cancelled; /* fetch_cancel() from within libcurl's callbacks: freed when curl lets go */

        char *url; /* as given, possibly with user:password@: handed to libcurl only */
        char *url_redacted;
        char *sums_url;
        char *sums_url_redacted;
        char *name; /* the URL's file name, looked up in the SUMS file */
        char *user, *password, *token_line;
        const char *secrets[4]; /* point into the above: scrubbed from every message we return */
        char *url_password;     /* the password parts of url's and sums_url's userinfo, if any */
        char *sums_url_password;
        char *entry, *data_path, *part_path;

        DigestAlgo expected_algo;
        char expected_hex[129];

        fetch_progress_t progress;
        fetch_done_t done;
        void *userdata;

        /* The current transfer. */
        CURL *easy;
        bool in_multi;
        bool paused; /* waiting for a free buffer */
        char *cur_url; /* this hop's URL: url, or where a redirect sent us */
        unsigned hops;
        bool send_auth; /* false once a redirect left the first URL's origin */
        bool revalidate;
        bool restarted; /* 416 on resume: tried again from zero once */
        struct curl_slist *headers;
        char errbuf[CURL_ERROR_SIZE];
        BodyMode body_mode;
        char *resp_etag, *resp_last_modified;
        int64_t resp_range_start; /* Content-Range's first byte; -1: none */
        HydraError error;         /* a local failure inside a callback (open, a bad Content-Range) */

        /* The cache entry. */
        json_t *meta;
        bool have_data; /* data with a meta.json whose size and sha256 fit */

        /* The download. */
        Sink *sink;
        Buffer *wbuf;    /* being filled */
        uint64_t offset; /* bytes data.part had when this transfer started */
        uint64_t bytes;  /* bytes of the file received so far, .part included */
        uint64_t total;  /* expected size of the file; 0: unknown */
        bool finish_ok;  /* PHASE_FINISH: the transfer succeeded (else: interrupted) */
        CURLcode finish_cc;

        char *sums;
        size_t sums_len;

        uint64_t start_usec, progress_usec, progress_bytes;

        sd_event_source *defer; /* delivers a result that needed no transfer */

        /* The outcome. */
        int result_r;
        char sha256_hex[129];
        char *notice;
        FetchResult result;
};

static Fetcher *fetcher_ref(Fetcher *fr) {
        fr->n_ref++;
        return fr;
}

static Fetcher *fetcher_unref(Fetcher *fr) {
        if (!fr)
                return NULL;
        if (--fr->n_ref > 0)
                return NULL;
        free(fr);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Fetcher *, fetcher_unref);

static json_t *json_unref(json_t *j) {
        json_decref(j);
        return NULL;
}

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * USEC_PER_SEC + (uint64_t) ts.tv_nsec / 1000ULL;
}

static void free_secret(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

static void curl_slist_free_allp(struct curl_slist **l) {
        curl_slist_free_all(*l);
        *l = NULL;
}

static void hex_encode(const unsigned char *d, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[d[i] >> 4];
                out[2 * i + 1] = digits[d[i] & 15];
        }
        out[2 * n] = '\0';
}

static DigestAlgo digest_algo_from_hex_len(size_t n) {
        return n == 64 ? DIGEST_SHA256 : n == 128 ? DIGEST_SHA512 : DIGEST_NONE;
}

/* Copies a hex digest of a known length, lowercased, into out[129]. Returns the algorithm or DIGEST_NONE. */
static DigestAlgo hex_digest_copy(const char *hex, size_t n, char out[static 129]) {
        DigestAlgo a = digest_algo_from_hex_len(n);

        if (a == DIGEST_NONE)
                return DIGEST_NONE;
        for (size_t i = 0; i < n; i++) {
                if (!isxdigit((unsigned char) hex[i]))
                        return DIGEST_NONE;
                out[i] = (char) tolower((unsigned char) hex[i]);
        }
        out[n] = '\0';
        return a;
}

/* "sha256:HEX", "sha512:HEX", or a bare HEX whose length says which. */
static int parse_checksum(const char *s, DigestAlgo *ret_algo, char ret_hex[static 129]) {
        const char *colon = strchr(s, ':');
        DigestAlgo a, named = DIGEST_NONE;

        if (colon) {
                size_t l = (size_t) (colon - s);
                if (l == 6 && strncasecmp(s, "sha256", 6) == 0)
                        named = DIGEST_SHA256;
                else if (l == 6 && strncasecmp(s, "sha512", 6) == 0)
                        named = DIGEST_SHA512;
                else
                        return -EINVAL;
                s = colon + 1;
        }
        a = hex_digest_copy(s, strlen(s), ret_hex);
        if (a == DIGEST_NONE || (named != DIGEST_NONE && named != a))
                return -EINVAL;
        *ret_algo = a;
        return 0;
}

static bool url_is_file(const char *url) {
        return strncasecmp(url, "file://", 7) == 0;
}

static bool url_scheme_supported(const char *url) {
        return strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0 || url_is_file(url);
}

/* The authority of a URL: after "://", up to the path, query or fragment. */
static const char *url_authority(const char *url, size_t *ret_len) {
        const char *p = strstr(url, "://");

        if (!p)
                return NULL;
        p += 3;
        *ret_len = strcspn(p, "/?#");
        return p;
}

/* The URL with any user:password@ removed: what the cache key is made of (the query stays: it may name another
 * file). Never shown: url_display() is. */
static char *url_strip_userinfo(const char *url) {
        const char *auth, *at;
        char *s;
        size_t l;

        if (!url)
                return NULL;
        auth = url_authority(url, &l);
        at = auth ? memrchr(auth, '@', l) : NULL;
        if (!at)
                return strdup(url);
        if (asprintf(&s, "%.*s%s", (int) (auth - url), url, at + 1) < 0)
                return NULL;
        return s;
}

/* The password of a URL's user:password@, for scrubbing. Returns 0 and NULL if there is none. */
static int url_userinfo_password(const char *url, char **ret) {
        const char *auth, *at, *colon;
        size_t l;

        *ret = NULL;
        auth = url_authority(url, &l);
        at = auth ? memrchr(auth, '@', l) : NULL;
        if (!at)
                return 0;
        colon = memchr(auth, ':', (size_t) (at - auth));
        if (!colon || colon + 1 == at)
                return 0;
        *ret = strndup(colon + 1, (size_t) (at - colon - 1));
        return *ret ? 0 : -ENOMEM;
}

/* scheme://host:port, lowercased, default ports filled in; NULL on parse failure (never the same origin). */
static char *url_origin(const char *url) {
        _cleanup_free_ char *scheme = NULL, *host = NULL, *port = NULL;
        CURLU *u = curl_url();
        char *s = NULL;

        if (!u)
                return NULL;
        if (curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
                for (char *p = host; *p; p++)
                        *p = (char) tolower((unsigned char) *p);
                if (asprintf(&s, "%s://%s:%s", scheme, host, port) < 0)
                        s = NULL;
        }
        curl_url_cleanup(u);
        return s;
}

static bool same_origin(const char *a, const char *b) {
        _cleanup_free_ char *oa = url_origin(a), *ob = url_origin(b);

        return oa && ob && streq(oa, ob);
}

/* The last path segment of a URL, percent-decoded: the name a SUMS file lists. */
static char *url_file_name(const char *url) {
        const char *auth, *path, *end, *slash;
        _cleanup_free_ char *raw = NULL;
        char *out;
        size_t l, j = 0;

        auth = url_authority(url, &l);
        path = auth ? auth + l : url;
        end = path + strcspn(path, "?#");
        slash = memrchr(path, '/', (size_t) (end - path));
        if (slash)
                path = slash + 1;
        raw = strndup(path, (size_t) (end - path));
        if (!raw)
                return NULL;
        out = malloc(strlen(raw) + 1);
        if (!out)
                return NULL;
        for (size_t i = 0; raw[i]; i++) {
                if (raw[i] == '%' && isxdigit((unsigned char) raw[i + 1]) && isxdigit((unsigned char) raw[i + 2])) {
                        char h[3] = { raw[i + 1], raw[i + 2], 0 };
                        out[j++] = (char) strtol(h, NULL, 16);
                        i += 2;
                } else
                        out[j++] = raw[i];
        }
        out[j] = '\0';
        return out;
}

char *fetch_cache_entry(const char *cache_dir, const char *url) {
        _cleanup_free_ char *key = NULL;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1];
        char *s;

        if (!cache_dir || !url)
                return NULL;
        key = url_strip_userinfo(url);
        if (!key)
                return NULL;
        if (EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) != 1)
                return NULL;
        hex_encode(md, md_len, hex);
        if (asprintf(&s, "%s/%s", cache_dir, hex) < 0)
                return NULL;
        return s;
}

/* Looks name up in a SHA256SUMS / SHA512SUMS text: "HEX  NAME", "HEX *NAME" (GNU), or "SHA256 (NAME) = HEX"
 * (BSD). The algorithm follows from the digest's length. Returns 0, or -ENOENT if name is not listed. */
static int sums_lookup(const char *text, size_t len, const char *name, DigestAlgo *ret_algo,
                       char ret_hex[static 129]) {
        const char *p = text, *end = text + len;
        size_t name_len = strlen(name);

        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t) (end - p));
                const char *le = eol ? eol : end, *hex, *fname;
                size_t hex_len, fname_len;

                if (le > p && le[-1] == '\r')
                        le--;
                while (p < le && (*p == ' ' || *p == '\t'))
                        p++;

                if ((size_t) (le - p) > 8 && (strncmp(p, "SHA256 (", 8) == 0 || strncmp(p, "SHA512 (", 8) == 0)) {
                        /* BSD: the name ends at the last ") = " */
                        const char *sep = NULL;
                        for (const char *q = p + 8; q + 4 <= le; q++)
                                if (memcmp(q, ") = ", 4) == 0)
                                        sep = q;
                        if (!sep)
                                goto next;
                        fname = p + 8;
                        fname_len = (size_t) (sep - fname);
                        hex = sep + 4;
                        hex_len = (size_t) (le - hex);
                } else {
                        hex = p;
                        hex_len = 0;
                        while (hex + hex_len < le && isxdigit((unsigned char) hex[hex_len]))
                                hex_len++;
                        fname = hex + hex_len;
                        if (le - fname < 2 || fname[0] != ' ' || (fname[1] != ' ' && fname[1] != '*'))
                                goto next;
                        fname += 2;
                        fname_len = (size_t) (le - fname);
                }
                if (fname_len >= 2 && fname[0] == '.' && fname[1] == '/') {
                        fname += 2;
                        fname_len -= 2;
                }
                if (fname_len == name_len && memcmp(fname, name, name_len) == 0) {
                        DigestAlgo a = hex_digest_copy(hex, hex_len, ret_hex);
                        if (a != DIGEST_NONE) {
                                *ret_algo = a;
                                return 0;
                        }
                }
        next:
                if (!eol)
                        break;
                p = eol + 1;
        }
        return -ENOENT;
}

/* Replaces every secret in s (in place) with "***", and the query of every URL of f with its redacted form, so
 * that no error we return can leak one, whatever libcurl wrote into its error buffer. Secrets shorter than 4
 * characters are left: they would mangle every message. s is a buffer of size bytes. */
static void scrub(const Fetch *f, char *s, size_t size) {
        for (size_t i = 0; i < ELEMENTSOF(f->secrets); i++) {
                const char *secret = f->secrets[i];
                size_t sl;
                char *p;

                if (!secret || (sl = strlen(secret)) < 4)
                        continue;
                while ((p = strstr(s, secret))) {
                        size_t tail = strlen(p + sl);
                        memcpy(p, "***", 3);
                        memmove(p + 3, p + sl, tail + 1);
                }
        }
        /* on ENOMEM, cut short before the query instead */
        (void) url_scrub_text(s, size, f->url);
        (void) url_scrub_text(s, size, f->sums_url);
        (void) url_scrub_text(s, size, f->cur_url);
}

/* --- meta.json --- */

static int meta_save(Fetch *f);

static int meta_load(Fetch *f) {
        _cleanup_free_ void *data = NULL;
        _cleanup_free_ char *path = NULL;
        json_t *m, *sha, *size, *url;
        struct stat st;
        size_t n;
        int r;

        f->meta = json_unref(f->meta);
        r = store_read(f->entry, "meta.json", FETCH_META_MAX, &data, &n, NULL);
        if (r < 0 && r != -ENOENT)
                log_debug_errno(r, "Cannot read meta.json of %s, ignoring: %m", f->url_redacted);
        m = r >= 0 ? json_loadb(data, n, 0, NULL) : NULL;
        if (m && !json_is_object(m))
                m = json_unref(m);
        f->meta = m ?: json_object();
        if (!f->meta)
                return -ENOMEM;

        /* An older hydrad stored the URL with its query values, readable by all: rewrite it the way it is
         * written now (the URL as shown, mode 0600). */
        url = json_object_get(f->meta, "url");
        if (m && asprintf(&path, "%s/meta.json", f->entry) >= 0 && lstat(path, &st) >= 0 &&
            ((st.st_mode & 0077) != 0 || (json_is_string(url) && !streq(json_string_value(url), f->url_redacted)))) {
                if (url)
                        (void) json_object_set_new(f->meta, "url", json_string(f->url_redacted));
                (void) meta_save(f);
        }

        sha = json_object_get(f->meta, "sha256");
        size = json_object_get(f->meta, "size");
        f->have_data = json_is_string(sha) && strlen(json_string_value(sha)) == 64 && json_is_integer(size) &&
                       stat(f->data_path, &st) >= 0 && S_ISREG(st.st_mode) &&
                       (json_int_t) st.st_size == json_integer_value(size);
        return 0;
}

/* Private: its URL shows parameter names, and it tells what this host downloads. */
static int meta_save(Fetch *f) {
        _cleanup_free_ char *text = json_dumps(f->meta, JSON_INDENT(2) | JSON_SORT_KEYS);
        HydraError e = {};
        int r;

        if (!text)
                return -ENOMEM;
        r = store_write_atomic(f->entry, "meta.json", text, strlen(text), 0600, &e);
        if (r < 0)
                log_warning_errno(r, "Cannot write the cache metadata of %s, ignoring: %s", f->url_redacted,
                                  e.message);
        return r;
}

static const char *meta_string(Fetch *f, const char *key) {
        return json_string_value(json_object_get(f->meta, key));
}

static void meta_set_string(json_t *o, const char *key, const char *value) {
        if (value)
                (void) json_object_set_new(o, key, json_string(value));
}

/* --- the disk worker --- */

static void eventfd_signal(int fd) {
        uint64_t one = 1;

        (void) write(fd, &one, sizeof(one));
}

static int digests_init(Sink *s) {
        if (EVP_DigestInit_ex(s->sha256, EVP_sha256(), NULL) != 1)
                return -EIO;
        if (s->sha512 && EVP_DigestInit_ex(s->sha512, EVP_sha512(), NULL) != 1)
                return -EIO;
        return 0;
}

static int digests_update(Sink *s, const void *p, size_t n) {
        if (EVP_DigestUpdate(s->sha256, p, n) != 1)
                return -EIO;
        if (s->sha512 && EVP_DigestUpdate(s->sha512, p, n) != 1)
                return -EIO;
        return 0;
}

static Sink *sink_free(Sink *s) {
        if (!s)
                return NULL;
        s->fd = safe_close(s->fd);
        EVP_MD_CTX_free(s->sha256);
        EVP_MD_CTX_free(s->sha512);
        return mfree(s);
}

/* Takes over fd. */
static Sink *sink_new(Fetch *f, int fd) {
        Sink *s = calloc(1, sizeof(*s));

        if (!s) {
                safe_close(fd);
                return NULL;
        }
        s->n_ref = 1;
        s->fd = fd;
        s->fetch = f;
        s->sha256 = EVP_MD_CTX_new();
        if (f->expected_algo == DIGEST_SHA512)
                s->sha512 = EVP_MD_CTX_new();
        if (!s->sha256 || (f->expected_algo == DIGEST_SHA512 && !s->sha512) || digests_init(s) < 0)
                return sink_free(s);
        return s;
}

/* Called with fr->lock held, or once the worker is gone. */
static void sink_unref_locked(Sink *s) {
        if (s && --s->n_ref == 0)
                sink_free(s);
}

static void fetcher_lock(Fetcher *fr) {
        if (fr->worker_running)
                pthread_mutex_lock(&fr->lock);
}

static void fetcher_unlock(Fetcher *fr) {
        if (fr->worker_running)
                pthread_mutex_unlock(&fr->lock);
}

/* The Fetch lets go of its sink. With cancel, queued work for it is skipped (its .part is gone). */
static void sink_release(Fetcher *fr, Sink **sp, bool cancel) {
        Sink *s = *sp;

        if (!s)
                return;
        *sp = NULL;
        s->fetch = NULL;
        if (cancel)
                atomic_store(&s->cancelled, true);
        fetcher_lock(fr);
        sink_unref_locked(s);
        fetcher_unlock(fr);
}

static void sink_fail(Sink *s, int r, const char *op) {
        if (s->error == 0) {
                s->error = r;
                s->error_op = op;
        }
}

static void job_run(Job *j) {
        Sink *s = j->sink;
        int r;

        if (atomic_load(&s->cancelled) || s->error < 0)
                return;

        switch (j->type) {
        case JOB_DATA:
                r = write_all(s->fd, j->buf->data, j->buf->len);
                if (r < 0) {
                        sink_fail(s, r, "write");
                        return;
                }
                if (digests_update(s, j->buf->data, j->buf->len) < 0) {
                        sink_fail(s, -EIO, "hash");
                        return;
                }
                s->size += j->buf->len;
                return;

        case JOB_HASH_FILE: {
                _cleanup_free_ char *buf = malloc(FETCH_HASH_CHUNK);

                if (!buf) {
                        sink_fail(s, -ENOMEM, "read");
                        return;
                }
                while (s->size < j->size && !atomic_load(&s->cancelled)) {
                        size_t want = j->size - s->size < FETCH_HASH_CHUNK ? (size_t) (j->size - s->size)
                                                                           : FETCH_HASH_CHUNK;
                        ssize_t n = pread(s->fd, buf, want, (off_t) s->size);
                        if (n < 0 && errno == EINTR)
                                continue;
                        if (n <= 0) {
                                sink_fail(s, n < 0 ? -errno : -EIO, "read");
                                return;
                        }
                        if (digests_update(s, buf, (size_t) n) < 0) {
                                sink_fail(s, -EIO, "hash");
                                return;
                        }
                        s->size += (uint64_t) n;
                }
                return;
        }

        case JOB_FINISH:
                if (j->fsync && fsync(s->fd) < 0)
                        sink_fail(s, -errno, "sync");
                return;
        }
}

static void *worker_main(void *userdata) {
        Fetcher *fr = userdata;

        pthread_mutex_lock(&fr->lock);
        for (;;) {
                bool notify = false;
                Job *j = fr->queue;

                if (!j) {
                        if (fr->stop)
                                break;
                        pthread_cond_wait(&fr->cond, &fr->lock);
                        continue;
                }
                fr->queue = j->next;
                if (!fr->queue)
                        fr->queue_tail = &fr->queue;
                pthread_mutex_unlock(&fr->lock);

                job_run(j);

                pthread_mutex_lock(&fr->lock);
                if (j->buf) {
                        j->buf->next = fr->free_buffers;
                        fr->free_buffers = j->buf;
                        j->buf = NULL;
                        notify = fr->want_buffer;
                }
                if (j->type == JOB_DATA) {
                        sink_unref_locked(j->sink);
                        free(j);
                } else {
                        j->next = NULL;
                        *fr->returned_tail = j;
                        fr->returned_tail = &j->next;
                        notify = true;
                }
                if (notify)
                        eventfd_signal(fr->efd);
        }
        pthread_mutex_unlock(&fr->lock);
        return NULL;
}

static int on_worker(sd_event_source *s, int fd, uint32_t revents, void *userdata);

static int worker_start(Fetcher *fr) {
        sigset_t all, saved;
        int r;

        if (fr->worker_running)
                return 0;

        if (fr->efd < 0) {
                fr->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (fr->efd < 0)
                        return -errno;
        }
        if (!fr->efd_source) {
                r = sd_event_add_io(fr->event, &fr->efd_source, fr->efd, EPOLLIN, on_worker, fr);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(fr->efd_source, "fetch-worker");
        }

        /* the worker takes no signal: they are the loop's (signalfd) */
        (void) sigfillset(&all);
        (void) pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = -pthread_create(&fr->worker, NULL, worker_main, fr);
        (void) pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0)
                return r;
        fr->worker_running = true;
        return 0;
}

static void worker_stop(Fetcher *fr) {
        if (!fr->worker_running)
                return;
        /* queued writes still happen (a .part kept for resuming gets all that arrived); then the thread ends */
        pthread_mutex_lock(&fr->lock);
        fr->stop = true;
        pthread_cond_signal(&fr->cond);
        pthread_mutex_unlock(&fr->lock);
        (void) pthread_join(fr->worker, NULL);
        fr->worker_running = false;
}

static int worker_submit(Fetcher *fr, JobType type, Sink *s, Buffer *buf, uint64_t size, bool fsync) {
        Job *j;
        int r;

        r = worker_start(fr);
        if (r < 0)
                return r;
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        *j = (Job) { .type = type, .sink = s, .buf = buf, .size = size, .fsync = fsync };

        pthread_mutex_lock(&fr->lock);
        s->n_ref++;
        *fr->queue_tail = j;
        fr->queue_tail = &j->next;
        pthread_cond_signal(&fr->cond);
        pthread_mutex_unlock(&fr->lock);
        return 0;
}

/* A free buffer, or NULL: then the worker says when one is back. */
static Buffer *buffer_get(Fetcher *fr) {
        Buffer *b = NULL;

        fetcher_lock(fr);
        if (fr->free_buffers) {
                b = fr->free_buffers;
                fr->free_buffers = b->next;
        } else if (fr->n_buffers < FETCH_WRITE_BUFFERS) {
                /* mapped, not malloc'ed: handed back to the kernel when idle (buffers_trim) */
                b = mmap(NULL, sizeof(Buffer), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (b == MAP_FAILED)
                        b = NULL;
                else
                        fr->n_buffers++;
        } else
                fr->want_buffer = true;
        fetcher_unlock(fr);
        if (b) {
                b->next = NULL;
                b->len = 0;
        }
        return b;
}

static void buffer_put(Fetcher *fr, Buffer *b) {
        if (!b)
                return;
        fetcher_lock(fr);
        b->next = fr->free_buffers;
        fr->free_buffers = b;
        fetcher_unlock(fr);
}

/* Unmaps the free buffers once nothing is being fetched: up to 32 MiB that an idle daemon has no use for. */
static void buffers_trim(Fetcher *fr) {
        Buffer *l;

        if (fr->fetches)
                return;
        fetcher_lock(fr);
        l = TAKE_PTR(fr->free_buffers);
        for (Buffer *b = l; b; b = b->next)
                fr->n_buffers--;
        fetcher_unlock(fr);
        while (l) {
                Buffer *b = l;
                l = b->next;
                (void) munmap(b, sizeof(Buffer));
        }
}

/* --- the Fetch object --- */

static void fetch_detach(Fetch *f) {
        Fetcher *fr = f->fetcher;

        f->defer = sd_event_source_disable_unref(f->defer);
        if (f->easy) {
                if (f->in_multi && fr && !fr->dead)
                        (void) curl_multi_remove_handle(fr->multi, f->easy);
                f->in_multi = false;
                curl_easy_cleanup(f->easy);
                f->easy = NULL;
        }
        if (!fr)
                return;

        /* what is queued for data.part still gets written: a .part kept for resuming then has all of it */
        buffer_put(fr, TAKE_PTR(f->wbuf));
        sink_release(fr, &f->sink, false);

        if (f->prev)
                f->prev->next = f->next;
        else
                fr->fetches = f->next;
        if (f->next)
                f->next->prev = f->prev;
        f->prev = f->next = NULL;
        f->fetcher = NULL;
        buffers_trim(fr);
}

static Fetch *fetch_free(Fetch *f) {
        if (!f)
                return NULL;
        fetch_detach(f);
        curl_slist_free_all(f->headers);
        json_decref(f->meta);
        free(f->url_redacted);
        free(f->sums_url_redacted);
        free(f->name);
        free_secret(f->url);
        free_secret(f->sums_url);
        free_secret(f->cur_url);
        free_secret(f->user);
        free_secret(f->password);
        free_secret(f->token_line);
        free_secret(f->url_password);
        free_secret(f->sums_url_password);
        free(f->entry);
        free(f->data_path);
        free(f->part_path);
        free(f->resp_etag);
        free(f->resp_last_modified);
        free(f->sums);
        free(f->notice);
        return mfree(f);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(Fetch *, fetch_free);

/* Removes data.part; what the worker still has queued for it is dropped. */
static void unlink_part(Fetch *f) {
        if (f->fetcher) {
                buffer_put(f->fetcher, TAKE_PTR(f->wbuf));
                sink_release(f->fetcher, &f->sink, true);
        }
        if (unlink(f->part_path) < 0 && errno != ENOENT)
                log_debug_errno(errno, "Cannot remove '%s', ignoring: %m", f->part_path);
}

/* Delivers the outcome and frees f. The Fetch leaves the fetcher first, so the callback may free it. */
static void fetch_complete(Fetch *f) {
        fetch_done_t done = f->done;
        void *userdata = f->userdata;

        fetch_detach(f);
        if (f->result_r < 0) {
                scrub(f, f->error.message, sizeof(f->error.message));
                done(f, f->result_r, NULL, &f->error, userdata);
        } else {
                f->result = (FetchResult) {
                        .path = f->data_path,
                        .sha256 = f->sha256_hex,
                        .from_cache = f->result.from_cache,
                        .revalidated = f->result.revalidated,
                        .notice = f->notice,
                };
                done(f, 0, &f->result, NULL, userdata);
        }
        fetch_free(f);
}

static void fetch_fail(Fetch *f, int r) {
        if (f->error.code >= 0 || f->error.message[0] == '\0')
                (void) hydra_error_set(&f->error, r, "download %s failed", f->url_redacted);
        f->result_r = f->error.code;
        fetch_complete(f);
}

static int on_deferred_complete(sd_event_source *s, void *userdata) {
        fetch_complete(userdata);
        return 0;
}

/* A result known without (further) transfer: delivered from the loop, never from fetch_start() itself. */
static int fetch_complete_later(Fetch *f) {
        int r;

        f->phase = PHASE_DONE;
        f->defer = sd_event_source_disable_unref(f->defer);
        r = sd_event_add_defer(f->fetcher->event, &f->defer, on_deferred_complete, f);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(f->defer, "fetch-complete");
        return 0;
}

/* Success from the cached data: sha256 from meta.json. */
static int fetch_use_cache(Fetch *f, bool revalidated, const char *notice) {
        (void) snprintf(f->sha256_hex, sizeof(f->sha256_hex), "%s", strempty(meta_string(f, "sha256")));
        f->result.from_cache = true;
        f->result.revalidated = revalidated;
        if (notice) {
                f->notice = strdup(notice);
                if (!f->notice)
                        return -ENOMEM;
        }
        f->result_r = 0;
        return 0;
}

/* --- libcurl callbacks (they run inside curl_multi_socket_action) --- */

static char *header_value(const char *buf, size_t len, const char *name) {
        size_t nl = strlen(name);
        const char *v, *e;

        if (len <= nl || strncasecmp(buf, name, nl) != 0 || buf[nl] != ':')
                return NULL;
        v = buf + nl + 1;
        e = buf + len;
        while (v < e && (*v == ' ' || *v == '\t'))
                v++;
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
        return strndup(v, (size_t) (e - v));
}

static size_t on_header(char *buf, size_t size, size_t n, void *userdata) {
        Fetch *f = userdata;
        size_t len = size * n;
        char *v;

        if (len >= 5 && strncasecmp(buf, "HTTP/", 5) == 0) {
                /* a new response (after a 100 Continue, or a redirect): forget the previous one's headers */
                f->resp_etag = mfree(f->resp_etag);
                f->resp_last_modified = mfree(f->resp_last_modified);
                f->resp_range_start = -1;
        } else if ((v = header_value(buf, len, "ETag"))) {
                free(f->resp_etag);
                f->resp_etag = v;
        } else if ((v = header_value(buf, len, "Last-Modified"))) {
                free(f->resp_last_modified);
                f->resp_last_modified = v;
        } else if ((v = header_value(buf, len, "Content-Range"))) {
                unsigned long long first;
                if (sscanf(v, "bytes %llu-", &first) == 1)
                        f->resp_range_start = (int64_t) first;
                free(v);
        }
        return len;
}

static long response_code(Fetch *f) {
        long code = 0;

        (void) curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &code);
        return code;
}

/* The first byte of a body (or the end of an empty one) decides what happens to it. */
static BodyMode body_start(Fetch *f) {
        curl_off_t cl = -1;
        long code = response_code(f);

        if (code >= 300 && code < 400)
                return BODY_DISCARD;
        if (code >= 400)
                return BODY_ABORT; /* the status says it all; no need for the server's error page */
        if (f->phase == PHASE_SUMS)
                return BODY_WRITE;

        /* Nothing is queued for the sink at this point (the .part was hashed, no byte of this body went out
         * yet), so the loop may touch it. */
        if (f->offset > 0 && code != 206) {
                log_info("Server ignored the Range request for %s, downloading it from the start", f->url_redacted);
                if (ftruncate(f->sink->fd, 0) < 0) {
                        (void) hydra_error_set(&f->error, -errno, "truncate '%s': %s", f->part_path,
                                               strerror(errno));
                        return BODY_ABORT;
                }
                f->sink->size = 0;
                f->offset = f->bytes = 0;
                if (digests_init(f->sink) < 0) {
                        (void) hydra_error_set(&f->error, -EIO, "digest of %s", f->url_redacted);
                        return BODY_ABORT;
                }
        } else if (code == 206 && f->resp_range_start != (int64_t) f->offset) {
                (void) hydra_error_set(&f->error, -EPROTO,
                                       "download %s: asked for bytes from %" PRIu64 ", the server sent %" PRIi64,
                                       f->url_redacted, f->offset, f->resp_range_start);
                return BODY_ABORT;
        }

        if (!f->sink) {
                int fd = open(f->part_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (fd < 0) {
                        (void) hydra_error_set(&f->error, -errno, "create '%s': %s", f->part_path, strerror(errno));
                        return BODY_ABORT;
                }
                f->sink = sink_new(f, fd);
                if (!f->sink) {
                        (void) hydra_error_set(&f->error, -ENOMEM, "out of memory");
                        return BODY_ABORT;
                }
                f->offset = f->bytes = 0;
        }

        (void) curl_easy_getinfo(f->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        f->total = cl >= 0 ? f->offset + (uint64_t) cl : 0;
        f->start_usec = now_usec();
        f->progress_usec = 0;

        /* Remember which version of the file data.part holds, for If-Range when resuming it. */
        if (f->resp_etag || f->resp_last_modified) {
                json_t *part = json_object();
                if (part) {
                        meta_set_string(part, "etag", f->resp_etag);
                        meta_set_string(part, "last_modified", f->resp_last_modified);
                        (void) json_object_set_new(f->meta, "part", part);
                        (void) meta_save(f);
                }
        }
        return BODY_WRITE;
}

static void report_progress(Fetch *f) {
        uint64_t now = now_usec(), since;
        FetchProgress p;

        if (f->progress_usec != 0 && now - f->progress_usec < FETCH_PROGRESS_USEC)
                return;
        since = f->progress_usec ?: f->start_usec;
        p = (FetchProgress) {
                .bytes = f->bytes,
                .total = f->total,
                .rate = now > since ? (f->bytes - (f->progress_usec ? f->progress_bytes : f->offset)) *
                                              USEC_PER_SEC / (now - since)
                                    : 0,
        };
        f->progress_usec = now;
        f->progress_bytes = f->bytes;
        f->progress(f, &p, f->userdata);
}

static size_t sums_append(Fetch *f, const char *ptr, size_t len) {
        char *p;

        if (f->sums_len + len > FETCH_SUMS_MAX) {
                (void) hydra_error_set(&f->error, -EFBIG, "SUMS file %s is larger than %d bytes",
                                       f->sums_url_redacted, FETCH_SUMS_MAX);
                f->body_mode = BODY_ABORT;
                return 0;
        }
        p = realloc(f->sums, f->sums_len + len + 1);
        if (!p) {
                (void) hydra_error_set(&f->error, -ENOMEM, "out of memory");
                f->body_mode = BODY_ABORT;
                return 0;
        }
        memcpy(p + f->sums_len, ptr, len);
        f->sums = p;
        f->sums_len += len;
        f->sums[f->sums_len] = '\0';
        return len;
}

static int buffer_submit(Fetch *f) {
        Buffer *b = TAKE_PTR(f->wbuf);
        int r;

        if (!b)
                return 0;
        if (b->len == 0) {
                buffer_put(f->fetcher, b);
                return 0;
        }
        r = worker_submit(f->fetcher, JOB_DATA, f->sink, b, 0, false);
        if (r < 0) {
                buffer_put(f->fetcher, b);
                return hydra_error_set(&f->error, r, "write '%s': %s", f->part_path, strerror(-r));
        }
        return 0;
}

static size_t on_write(char *ptr, size_t size, size_t n, void *userdata) {
        Fetch *f = userdata;
        size_t len = size * n, room;
        Buffer *spare = NULL;

        if (f->cancelled)
                return 0;
        if (f->body_mode == BODY_UNKNOWN)
                f->body_mode = body_start(f);
        if (f->body_mode == BODY_DISCARD)
                return len;
        if (f->body_mode != BODY_WRITE)
                return 0;
        if (f->phase == PHASE_SUMS)
                return sums_append(f, ptr, len);

        /* libcurl hands over 16 KiB at a time; they are gathered into 1 MiB buffers for the worker. Take every
         * buffer this piece needs first: a paused write must leave nothing behind, libcurl delivers it again. */
        room = f->wbuf ? FETCH_WRITE_BUFFER_SIZE - f->wbuf->len : 0;
        for (size_t need = len > room ? len - room : 0; need > 0;) {
                Buffer *b = buffer_get(f->fetcher);
                if (!b) {
                        while (spare) {
                                b = spare;
                                spare = b->next;
                                buffer_put(f->fetcher, b);
                        }
                        f->paused = true;
                        return CURL_WRITEFUNC_PAUSE;
                }
                b->next = spare;
                spare = b;
                need -= need < FETCH_WRITE_BUFFER_SIZE ? need : FETCH_WRITE_BUFFER_SIZE;
        }

        while (len > 0) {
                size_t k;

                if (!f->wbuf) {
                        f->wbuf = spare;
                        spare = spare->next;
                        f->wbuf->next = NULL;
                }
                k = FETCH_WRITE_BUFFER_SIZE - f->wbuf->len;
                if (k > len)
                        k = len;
                memcpy(f->wbuf->data + f->wbuf->len, ptr, k);
                f->wbuf->len += k;
                f->bytes += k;
                ptr += k;
                len -= k;
                if (f->wbuf->len == FETCH_WRITE_BUFFER_SIZE && buffer_submit(f) < 0) {
                        while (spare) {
                                Buffer *b = spare;
                                spare = b->next;
                                buffer_put(f->fetcher, b);
                        }
                        f->body_mode = BODY_ABORT;
                        return 0;
                }
        }

        if (f->progress)
                report_progress(f);
        return f->cancelled ? 0 : size * n;
}

/* --- the glue: libcurl's sockets and timer on sd-event --- */

static void fetcher_process(Fetcher *fr);

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        CurlIo *io = userdata;
        _cleanup_(fetcher_unrefp) Fetcher *fr = fetcher_ref(io->fetcher);
        int action = 0, running = 0;

        if (revents & EPOLLIN)
                action |= CURL_CSELECT_IN;
        if (revents & EPOLLOUT)
                action |= CURL_CSELECT_OUT;
        if (revents & (EPOLLERR | EPOLLHUP))
                action |= CURL_CSELECT_ERR;

        fr->in_curl++;
        (void) curl_multi_socket_action(fr->multi, fd, action, &running);
        fr->in_curl--;
        fetcher_process(fr);
        return 0;
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *userdata, void *socketp) {
        Fetcher *fr = userdata;
        CurlIo *io = socketp;
        uint32_t events = 0;
        int r;

        if (what == CURL_POLL_REMOVE) {
                if (io) {
                        sd_event_source_disable_unref(io->source);
                        if (io->prev)
                                io->prev->next = io->next;
                        else
                                fr->ios = io->next;
                        if (io->next)
                                io->next->prev = io->prev;
                        free(io);
                        if (!fr->dead)
                                (void) curl_multi_assign(fr->multi, s, NULL);
                }
                return 0;
        }

        if (what == CURL_POLL_IN || what == CURL_POLL_INOUT)
                events |= EPOLLIN;
        if (what == CURL_POLL_OUT || what == CURL_POLL_INOUT)
                events |= EPOLLOUT;

        if (io) {
                if (sd_event_source_set_io_events(io->source, events) < 0 ||
                    sd_event_source_set_enabled(io->source, SD_EVENT_ON) < 0)
                        return -1;
                return 0;
        }

        io = calloc(1, sizeof(*io));
        if (!io)
                return -1;
        io->fetcher = fr;
        r = sd_event_add_io(fr->event, &io->source, s, events, on_io, io);
        if (r < 0) {
                log_debug_errno(r, "Cannot watch a curl socket: %m");
                free(io);
                return -1;
        }
        (void) sd_event_source_set_description(io->source, "fetch-io");
        if (curl_multi_assign(fr->multi, s, io) != CURLM_OK) {
                sd_event_source_disable_unref(io->source);
                free(io);
                return -1;
        }
        io->next = fr->ios;
        if (fr->ios)
                fr->ios->prev = io;
        fr->ios = io;
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        _cleanup_(fetcher_unrefp) Fetcher *fr = fetcher_ref(userdata);
        int running = 0;

        fr->in_curl++;
        (void) curl_multi_socket_action(fr->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        fr->in_curl--;
        fetcher_process(fr);
        return 0;
}

/* libcurl asks to be woken after timeout_ms (0: as soon as possible, -1: never). Never call socket_action from
 * here: curl is not reentrant; the timer source does it from the loop. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userdata) {
        Fetcher *fr = userdata;
        uint64_t usec;
        int r;

        if (timeout_ms < 0) {
                if (fr->timer)
                        (void) sd_event_source_set_enabled(fr->timer, SD_EVENT_OFF);
                return 0;
        }
        usec = (uint64_t) timeout_ms * USEC_PER_MSEC;
        if (fr->timer) {
                r = sd_event_source_set_time_relative(fr->timer, usec);
                if (r >= 0)
                        r = sd_event_source_set_enabled(fr->timer, SD_EVENT_ONESHOT);
        } else {
                r = sd_event_add_time_relative(fr->event, &fr->timer, CLOCK_MONOTONIC, usec, USEC_PER_MSEC,
                                               on_timer, fr);
                if (r >= 0)
                        (void) sd_event_source_set_description(fr->timer, "fetch-timer");
        }
        return r < 0 ? -1 : 0;
}

/* --- transfers --- */

static int easy_setup(Fetch *f, const char *url, struct curl_slist *headers) {
        CURL *c = f->easy;
        bool main_phase = f->phase == PHASE_MAIN;
        bool file = url_is_file(url);
        char range[32];

#define SETOPT(opt, val)                                              \
        do {                                                          \
                if (curl_easy_setopt(c, opt, val) != CURLE_OK)        \
                        return -EINVAL;                               \
        } while (0)

        SETOPT(CURLOPT_URL, url);
        SETOPT(CURLOPT_PRIVATE, f);
        SETOPT(CURLOPT_ERRORBUFFER, f->errbuf);
        SETOPT(CURLOPT_NOSIGNAL, 1L);
        SETOPT(CURLOPT_USERAGENT, FETCH_USER_AGENT);
        /* file:// only where the caller asked for it: a server must not redirect us to local files */
        SETOPT(CURLOPT_PROTOCOLS_STR, f->hops == 0 ? "http,https,file" : "http,https");
        SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
        SETOPT(CURLOPT_FOLLOWLOCATION, 0L); /* followed by on_redirect(), which also drops the token */
        SETOPT(CURLOPT_BUFFERSIZE, FETCH_BUFFER_SIZE);
        SETOPT(CURLOPT_WRITEFUNCTION, on_write);
        SETOPT(CURLOPT_WRITEDATA, f);
        SETOPT(CURLOPT_HEADERFUNCTION, on_header);
        SETOPT(CURLOPT_HEADERDATA, f);
        SETOPT(CURLOPT_CONNECTTIMEOUT, FETCH_CONNECT_TIMEOUT_SEC);
        SETOPT(CURLOPT_LOW_SPEED_LIMIT, f->fetcher->low_speed_limit);
        SETOPT(CURLOPT_LOW_SPEED_TIME, f->fetcher->low_speed_time);
        SETOPT(CURLOPT_TCP_KEEPALIVE, 1L);
        SETOPT(CURLOPT_USERNAME, f->send_auth ? f->user : NULL);
        SETOPT(CURLOPT_PASSWORD, f->send_auth ? f->password : NULL);
        SETOPT(CURLOPT_HTTPHEADER, headers);

        if (main_phase && f->offset > 0) {
                (void) snprintf(range, sizeof(range), "%" PRIu64 "-", f->offset);
                SETOPT(CURLOPT_RANGE, range);
        } else
                SETOPT(CURLOPT_RANGE, NULL);

        /* file:// has no headers: libcurl compares the file's mtime itself */
        if (main_phase && f->revalidate && file && meta_string(f, "last_modified")) {
                time_t t = curl_getdate(meta_string(f, "last_modified"), NULL);
                SETOPT(CURLOPT_TIMECONDITION, (long) CURL_TIMECOND_IFMODSINCE);
                SETOPT(CURLOPT_TIMEVALUE_LARGE, (curl_off_t) t);
        } else
                SETOPT(CURLOPT_TIMECONDITION, (long) CURL_TIMECOND_NONE);
#undef SETOPT
        return 0;
}

static int headers_append(struct curl_slist **l, const char *fmt, const char *value) {
        _cleanup_free_ char *line = NULL;
        struct curl_slist *n;

        if (asprintf(&line, fmt, value) < 0)
                return -ENOMEM;
        n = curl_slist_append(*l, line);
        if (!n)
                return -ENOMEM;
        *l = n;
        return 0;
}

/* (Re)starts the easy handle on url: the first hop of a step, or where a redirect sent it. */
static int transfer_start(Fetch *f, const char *url) {
        Fetcher *fr = f->fetcher;
        _cleanup_(curl_slist_free_allp) struct curl_slist *h = NULL;
        char *u;
        int r;

        if (f->in_multi) {
                (void) curl_multi_remove_handle(fr->multi, f->easy);
                f->in_multi = false;
        }
        if (!f->easy) {
                f->easy = curl_easy_init();
                if (!f->easy)
                        return -ENOMEM;
        }

        u = strdup(url);
        if (!u)
                return -ENOMEM;
        free_secret(f->cur_url);
        f->cur_url = u;

        f->body_mode = BODY_UNKNOWN;
        f->errbuf[0] = '\0';
        f->resp_etag = mfree(f->resp_etag);
        f->resp_last_modified = mfree(f->resp_last_modified);
        f->resp_range_start = -1;

        if (f->send_auth && f->token_line) {
                struct curl_slist *n = curl_slist_append(h, f->token_line);
                if (!n)
                        return -ENOMEM;
                h = n;
        }
        if (f->phase == PHASE_MAIN && f->revalidate && !url_is_file(url)) {
                if (meta_string(f, "etag") && headers_append(&h, "If-None-Match: %s", meta_string(f, "etag")) < 0)
                        return -ENOMEM;
                if (meta_string(f, "last_modified") &&
                    headers_append(&h, "If-Modified-Since: %s", meta_string(f, "last_modified")) < 0)
                        return -ENOMEM;
        }
        if (f->phase == PHASE_MAIN && f->offset > 0) {
                json_t *part = json_object_get(f->meta, "part");
                const char *etag = json_string_value(json_object_get(part, "etag"));
                const char *lm = json_string_value(json_object_get(part, "last_modified"));
                /* If-Range takes a strong validator only */
                const char *v = etag && strncmp(etag, "W/", 2) != 0 ? etag : lm;
                if (v && headers_append(&h, "If-Range: %s", v) < 0)
                        return -ENOMEM;
        }

        r = easy_setup(f, url, h);
        if (r < 0)
                return r;
        curl_slist_free_all(f->headers);
        f->headers = TAKE_PTR(h);

        if (curl_multi_add_handle(fr->multi, f->easy) != CURLM_OK)
                return -EIO;
        f->in_multi = true;
        return 0;
}

static int main_start(Fetch *f) {
        f->phase = PHASE_MAIN;
        f->hops = 0;
        f->send_auth = true;
        if (f->offset > 0)
                log_info("Resuming %s at %" PRIu64 " bytes", f->url_redacted, f->offset);
        else if (f->revalidate)
                log_debug("Revalidating the cached %s", f->url_redacted);
        else
                log_info("Downloading %s", f->url_redacted);
        return transfer_start(f, f->url);
}

/* The checksum is known (or there is none): use the cache, resume, revalidate or download. */
static int fetch_proceed(Fetch *f, HydraError *err) {
        const char *algo = digest_algo_table[f->expected_algo];
        struct stat st;
        int r;

        if (f->expected_algo != DIGEST_NONE && f->have_data) {
                const char *cached = meta_string(f, algo);
                if (cached && streq(cached, f->expected_hex)) {
                        log_info("Using the cached %s: its %s matches", f->url_redacted, algo);
                        r = fetch_use_cache(f, false, NULL);
                        if (r >= 0)
                                r = fetch_complete_later(f);
                        return r < 0 ? hydra_error_set(err, r, "use the cached %s", f->url_redacted) : 0;
                }
        }

        /* With an expected checksum the cached copy must change: a 304 would not help. */
        f->revalidate = f->have_data && f->expected_algo == DIGEST_NONE;
        f->offset = f->bytes = 0;

        if (lstat(f->part_path, &st) >= 0) {
                /* Resume unless the URL is a local file (copying it again is cheap) or the .part cannot be told
                 * apart from a left-over next to good data. */
                bool resume = S_ISREG(st.st_mode) && st.st_size > 0 && !url_is_file(f->url) &&
                              (!f->have_data || json_object_get(f->meta, "part"));
                if (resume) {
                        int fd = open(f->part_path, O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
                        if (fd < 0)
                                return hydra_error_set(err, -errno, "open '%s': %s", f->part_path, strerror(errno));
                        f->sink = sink_new(f, fd);
                        if (!f->sink)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        /* the digest must cover what is there: the worker reads it back first */
                        r = worker_submit(f->fetcher, JOB_HASH_FILE, f->sink, NULL, (uint64_t) st.st_size, false);
                        if (r < 0)
                                return hydra_error_set(err, r, "hash '%s': %s", f->part_path, strerror(-r));
                        f->revalidate = false;
                        f->phase = PHASE_HASH_PART;
                        return 0;
                }
                unlink_part(f);
        }

        r = main_start(f);
        if (r < 0)
                return hydra_error_set(err, r, "start downloading %s", f->url_redacted);
        return 0;
}

/* Connection-level failures, and timeouts: worth keeping a .part for, and "unreachable" for the cache. */
static bool curl_code_transient(CURLcode cc) {
        switch (cc) {
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_CONNECT:
        case CURLE_HTTP2:
        case CURLE_PARTIAL_FILE:
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_HTTP2_STREAM:
        case CURLE_HTTP3:
        case CURLE_QUIC_CONNECT_ERROR:
                return true;
        default:
                return false;
        }
}

static int curl_code_to_errno(CURLcode cc) {
        switch (cc) {
        case CURLE_COULDNT_RESOLVE_PROXY:
        case CURLE_COULDNT_RESOLVE_HOST:
                return -EHOSTUNREACH;
        case CURLE_COULDNT_CONNECT:
                return -ECONNREFUSED;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_PARTIAL_FILE:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
                return -ECONNRESET;
        case CURLE_FILE_COULDNT_READ_FILE:
                return -ENOENT;
        case CURLE_UNSUPPORTED_PROTOCOL:
                return -EPROTONOSUPPORT;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CACERT_BADFILE:
                return -EPERM;
        default:
                return -EIO;
        }
}

static int http_status_to_errno(long code) {
        switch (code) {
        case 401:
        case 403:
                return -EACCES;
        case 404:
        case 410:
                return -ENOENT;
        default:
                return -EIO;
        }
}

static int set_http_error(Fetch *f, long code, const char *url_redacted) {
        const char *hint = "";

        if (code == 401 || code == 403)
                hint = f->user || f->token_line ? " (credentials refused)" : " (credentials required)";
        return hydra_error_set(&f->error, http_status_to_errno(code), "HTTP %ld from %s%s", code, url_redacted,
                               hint);
}

/* libcurl's message for a failed transfer, scrubbed: it goes into logs as well as errors. */
static const char *curl_error_text(Fetch *f, CURLcode cc) {
        if (!f->errbuf[0])
                return curl_easy_strerror(cc);
        scrub(f, f->errbuf, sizeof(f->errbuf));
        return f->errbuf;
}

static int set_curl_error(Fetch *f, CURLcode cc, const char *what, const char *url_redacted) {
        return hydra_error_set(&f->error, curl_code_to_errno(cc), "%s %s: %s", what, url_redacted,
                               curl_error_text(f, cc));
}

/* A 3xx: follow Location ourselves. Returns 1 if a new hop started, 0 if there is nothing to follow, <0 on
 * error (f->error set). */
static int on_redirect(Fetch *f, long code, const char *url_redacted) {
        char *location = NULL;
        _cleanup_free_ char *target = NULL, *shown = NULL;
        int r;

        if (curl_easy_getinfo(f->easy, CURLINFO_REDIRECT_URL, &location) != CURLE_OK || !location)
                return 0;
        if (++f->hops > FETCH_MAX_REDIRECTS)
                return hydra_error_set(&f->error, -ELOOP, "%s: more than %d redirects", url_redacted,
                                       FETCH_MAX_REDIRECTS);
        if (strncasecmp(location, "http://", 7) != 0 && strncasecmp(location, "https://", 8) != 0)
                return hydra_error_set(&f->error, -EPROTONOSUPPORT,
                                       "%s: redirect to a URL that is not http or https refused", url_redacted);
        target = strdup(location); /* owned by the easy handle, which transfer_start() reconfigures */
        shown = url_display(location); /* a signed Location carries its credentials in the query */
        if (!target || !shown)
                return hydra_error_set(&f->error, -ENOMEM, "out of memory");
        log_debug("%s: HTTP %ld, redirected to %s", url_redacted, code, shown);
        if (f->send_auth && !same_origin(f->cur_url, target)) {
                log_debug("%s redirects to another origin: credentials are not sent there", url_redacted);
                f->send_auth = false;
        }
        r = transfer_start(f, target);
        if (r < 0)
                return hydra_error_set(&f->error, r, "follow the redirect of %s", url_redacted);
        return 1;
}

static void sums_done(Fetch *f, CURLcode cc) {
        const char *u = f->sums_url_redacted;
        long code = response_code(f);
        HydraError e = {};
        int r;

        if (f->error.code < 0) {
                fetch_fail(f, f->error.code);
                return;
        }
        if (cc == CURLE_OK || f->body_mode == BODY_ABORT) {
                if (code >= 300 && code < 400) {
                        r = on_redirect(f, code, u);
                        if (r < 0) {
                                fetch_fail(f, r);
                                return;
                        }
                        if (r > 0)
                                return;
                }
                if (code >= 500 && f->have_data) {
                        log_warning("HTTP %ld from %s, using the cached %s", code, u, f->url_redacted);
                        r = fetch_use_cache(f, false, "server error on the checksum list, using the cached copy");
                        if (r < 0)
                                fetch_fail(f, hydra_error_set(&f->error, r, "out of memory"));
                        else
                                fetch_complete(f);
                        return;
                }
                if (code >= 300) {
                        fetch_fail(f, set_http_error(f, code, u));
                        return;
                }
        }
        if (cc != CURLE_OK) {
                if (curl_code_transient(cc) && f->have_data) {
                        log_warning("Cannot reach %s (%s), using the cached %s", u,
                                    curl_error_text(f, cc), f->url_redacted);
                        r = fetch_use_cache(f, false, "server unreachable, using the cached copy");
                        if (r < 0)
                                fetch_fail(f, hydra_error_set(&f->error, r, "out of memory"));
                        else
                                fetch_complete(f);
                        return;
                }
                fetch_fail(f, set_curl_error(f, cc, "download", u));
                return;
        }

        r = sums_lookup(f->sums ?: "", f->sums_len, f->name, &f->expected_algo, f->expected_hex);
        f->sums = mfree(f->sums);
        f->sums_len = 0;
        if (r < 0) {
                fetch_fail(f, hydra_error_set(&f->error, r, "%s lists no checksum for '%s'", u, f->name));
                return;
        }
        log_debug("%s: %s of '%s' is %s", u, digest_algo_table[f->expected_algo], f->name, f->expected_hex);

        r = fetch_proceed(f, &e);
        if (r < 0) {
                f->error = e;
                fetch_fail(f, r);
        }
}

/* The worker has written and synced everything: verify, then data.part becomes data. */
static int main_finish(Fetch *f) {
        unsigned char md[EVP_MAX_MD_SIZE];
        char got[129], got512[129] = "";
        unsigned md_len = 0;
        const char *actual;
        Sink *s = f->sink;
        json_t *m;
        int r;

        if (EVP_DigestFinal_ex(s->sha256, md, &md_len) != 1)
                return hydra_error_set(&f->error, -EIO, "digest of %s", f->url_redacted);
        hex_encode(md, md_len, got);
        if (s->sha512) {
                if (EVP_DigestFinal_ex(s->sha512, md, &md_len) != 1)
                        return hydra_error_set(&f->error, -EIO, "digest of %s", f->url_redacted);
                hex_encode(md, md_len, got512);
        }

        actual = f->expected_algo == DIGEST_SHA512 ? got512 : got;
        if (f->expected_algo != DIGEST_NONE && !streq(actual, f->expected_hex)) {
                const char *algo = digest_algo_table[f->expected_algo];
                /* Nothing of this is worth keeping: the .part is wrong, and a data file from before is not what
                 * the server serves any more. */
                (void) unlink(f->data_path);
                (void) store_remove(f->entry, "meta.json");
                return hydra_error_set(&f->error, -EBADMSG, "checksum mismatch for %s: expected %s:%s, got %s:%s",
                                       f->url_redacted, algo, f->expected_hex, algo, actual);
        }

        /* The old meta.json goes first, durably: a crash before the new one is written leaves data without
         * meta.json (downloaded again), never data described by the metadata of another version. */
        r = store_remove(f->entry, "meta.json");
        if (r >= 0)
                r = fsync_dir(f->entry);
        if (r < 0)
                return hydra_error_set(&f->error, r, "remove the old metadata in '%s': %s", f->entry, strerror(-r));
        if (rename(f->part_path, f->data_path) < 0)
                return hydra_error_set(&f->error, -errno, "rename '%s' into '%s': %s", f->part_path, f->data_path,
                                       strerror(errno));

        m = json_object();
        if (!m)
                return hydra_error_set(&f->error, -ENOMEM, "out of memory");
        meta_set_string(m, "url", f->url_redacted);
        meta_set_string(m, "etag", f->resp_etag);
        meta_set_string(m, "last_modified", f->resp_last_modified);
        (void) json_object_set_new(m, "size", json_integer((json_int_t) f->bytes));
        meta_set_string(m, "sha256", got);
        if (got512[0])
                meta_set_string(m, "sha512", got512);
        (void) json_object_set_new(m, "time", json_integer((json_int_t) time(NULL)));
        json_decref(f->meta);
        f->meta = m;
        sink_release(f->fetcher, &f->sink, false);
        (void) meta_save(f); /* on failure, data is simply not a cache hit next time */

        memcpy(f->sha256_hex, got, sizeof(got));
        f->result.from_cache = false;
        f->result_r = 0;
        log_info("Downloaded %s: %" PRIu64 " bytes, sha256 %s", f->url_redacted, f->bytes, got);
        return 0;
}

/* The transfer ended, well (ok) or interrupted: the worker writes what is left, then reports back. */
static int finish_start(Fetch *f, bool ok, CURLcode cc) {
        int r;

        if (!f->sink) {
                /* no body ever started: an empty file (or nothing to keep) */
                if (!ok)
                        return 0;
                f->body_mode = body_start(f);
                if (f->body_mode != BODY_WRITE)
                        return f->error.code < 0 ? f->error.code
                                                 : hydra_error_set(&f->error, -EIO, "download %s failed",
                                                                   f->url_redacted);
        }
        r = buffer_submit(f);
        if (r < 0)
                return r;
        /* a finished download is synced before it is renamed: data is durable once the done callback runs */
        r = worker_submit(f->fetcher, JOB_FINISH, f->sink, NULL, 0, ok);
        if (r < 0)
                return hydra_error_set(&f->error, r, "write '%s': %s", f->part_path, strerror(-r));
        f->phase = PHASE_FINISH;
        f->finish_ok = ok;
        f->finish_cc = cc;
        return 1;
}

/* The worker is done with a JOB_HASH_FILE or JOB_FINISH of f. */
static void on_sink_done(Fetch *f, Job *j) {
        Sink *s = f->sink;
        const char *u = f->url_redacted;
        CURLcode cc = f->finish_cc;
        int r;

        if (s->error < 0) {
                (void) hydra_error_set(&f->error, s->error, "%s '%s': %s", s->error_op, f->part_path,
                                       strerror(-s->error));
                unlink_part(f);
                fetch_fail(f, f->error.code);
                return;
        }

        if (j->type == JOB_HASH_FILE) {
                f->offset = f->bytes = s->size;
                r = main_start(f);
                if (r < 0)
                        fetch_fail(f, hydra_error_set(&f->error, r, "start downloading %s", u));
                return;
        }

        if (f->finish_ok) {
                r = main_finish(f);
                if (r < 0) {
                        unlink_part(f);
                        fetch_fail(f, r);
                } else
                        fetch_complete(f);
                return;
        }

        /* interrupted: what arrived stays for the next attempt */
        if (s->size == 0)
                unlink_part(f);
        if (f->revalidate && f->have_data) {
                /* a newer version was coming: the verified copy we have still serves */
                log_warning("Download of a newer %s interrupted after %" PRIu64 " bytes (%s), using the cached copy",
                            u, s->size, curl_error_text(f, cc));
                sink_release(f->fetcher, &f->sink, false);
                r = fetch_use_cache(f, false, "the download of a newer version was interrupted, using the cached copy");
                if (r < 0)
                        fetch_fail(f, hydra_error_set(&f->error, r, "out of memory"));
                else
                        fetch_complete(f);
                return;
        }
        (void) hydra_error_set(&f->error, curl_code_to_errno(cc),
                               "download %s interrupted after %" PRIu64 " bytes%s: %s", u, s->size,
                               s->size > 0 ? " (kept for resuming)" : "",
                               curl_error_text(f, cc));
        fetch_fail(f, f->error.code);
}

static void use_cache_or_fail(Fetch *f, bool revalidated, const char *notice) {
        int r;

        unlink_part(f);
        r = fetch_use_cache(f, revalidated, notice);
        if (r < 0)
                fetch_fail(f, hydra_error_set(&f->error, r, "out of memory"));
        else
                fetch_complete(f);
}

static void main_done(Fetch *f, CURLcode cc) {
        const char *u = f->url_redacted;
        long code = response_code(f);
        int r;

        if (f->error.code < 0) {
                /* a local failure inside the write callback (open, a wrong Content-Range) */
                unlink_part(f);
                fetch_fail(f, f->error.code);
                return;
        }

        if (cc == CURLE_OK || f->body_mode == BODY_ABORT) {
                long unmet = 0;

                if (code >= 300 && code < 400 && code != 304) {
                        r = on_redirect(f, code, u);
                        if (r < 0) {
                                unlink_part(f);
                                fetch_fail(f, r);
                                return;
                        }
                        if (r > 0)
                                return;
                }

                (void) curl_easy_getinfo(f->easy, CURLINFO_CONDITION_UNMET, &unmet);
                if (f->revalidate && (code == 304 || (url_is_file(f->cur_url) && unmet))) {
                        log_info("Using the cached %s: not modified", u);
                        use_cache_or_fail(f, true, NULL);
                        return;
                }

                if (code == 416 && f->offset > 0 && !f->restarted) {
                        log_info("Server refused to resume %s, downloading it from the start", u);
                        f->restarted = true;
                        unlink_part(f);
                        f->offset = f->bytes = 0;
                        r = main_start(f);
                        if (r < 0)
                                fetch_fail(f, hydra_error_set(&f->error, r, "restart downloading %s", u));
                        return;
                }

                if (code >= 500 && f->revalidate && f->bytes == 0) {
                        log_warning("HTTP %ld from %s, using the cached copy", code, u);
                        use_cache_or_fail(f, false, "server error, using the cached copy");
                        return;
                }

                if (code >= 300 || (code == 0 && !url_is_file(f->cur_url))) {
                        /* a server error may pass: keep what we have for the next attempt */
                        if (code < 500)
                                unlink_part(f);
                        fetch_fail(f, code > 0 ? set_http_error(f, code, u)
                                               : hydra_error_set(&f->error, -EIO, "download %s: no response", u));
                        return;
                }

                if (cc == CURLE_OK) {
                        r = finish_start(f, true, cc);
                        if (r < 0) {
                                unlink_part(f);
                                fetch_fail(f, r);
                        }
                        return;
                }
        }

        if (curl_code_transient(cc)) {
                if (f->revalidate && f->bytes == 0) {
                        log_warning("Cannot reach %s (%s), using the cached copy", u,
                                    curl_error_text(f, cc));
                        use_cache_or_fail(f, false, "server unreachable, using the cached copy");
                        return;
                }
                if (f->sink) {
                        r = finish_start(f, false, cc);
                        if (r > 0)
                                return;
                }
        }
        unlink_part(f);
        fetch_fail(f, set_curl_error(f, cc, "download", u));
}

static void on_transfer_done(Fetch *f, CURLcode cc) {
        Fetcher *fr = f->fetcher;

        /* getinfo still works on a removed handle */
        (void) curl_multi_remove_handle(fr->multi, f->easy);
        f->in_multi = false;
        f->paused = false;

        if (f->cancelled) {
                unlink_part(f);
                fetch_free(f);
                return;
        }
        if (f->phase == PHASE_SUMS)
                sums_done(f, cc);
        else
                main_done(f, cc);
}

/* Finished transfers, and fetches cancelled while libcurl was running. */
static void fetcher_process(Fetcher *fr) {
        CURLMsg *m;
        int left;

        while (!fr->dead && (m = curl_multi_info_read(fr->multi, &left))) {
                CURLcode cc = m->data.result;
                Fetch *f = NULL;

                if (m->msg != CURLMSG_DONE)
                        continue;
                if (curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &f) != CURLE_OK || !f)
                        continue;
                on_transfer_done(f, cc);
        }

        for (Fetch *f = fr->dead ? NULL : fr->fetches, *next; f; f = next) {
                next = f->next;
                if (f->cancelled) {
                        unlink_part(f);
                        fetch_free(f);
                }
        }
}

/* The worker returned jobs, or freed a buffer a paused transfer waits for. */
static int on_worker(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        _cleanup_(fetcher_unrefp) Fetcher *fr = fetcher_ref(userdata);
        Job *returned;
        uint64_t v;
        bool unpause;

        (void) read(fr->efd, &v, sizeof(v));

        pthread_mutex_lock(&fr->lock);
        returned = fr->returned;
        fr->returned = NULL;
        fr->returned_tail = &fr->returned;
        unpause = fr->free_buffers;
        if (unpause)
                fr->want_buffer = false;
        pthread_mutex_unlock(&fr->lock);

        while (returned) {
                Job *j = returned;
                returned = j->next;
                /* a done callback may have freed the fetcher: then only clean up */
                if (!fr->dead && j->sink->fetch)
                        on_sink_done(j->sink->fetch, j);
                fetcher_lock(fr);
                sink_unref_locked(j->sink);
                fetcher_unlock(fr);
                free(j);
        }

        if (!fr->dead)
                buffers_trim(fr); /* buffers of a cancelled download came back */

        if (unpause && !fr->dead) {
                for (Fetch *f = fr->fetches; f; f = f->next)
                        if (f->paused && f->in_multi) {
                                f->paused = false;
                                fr->in_curl++;
                                (void) curl_easy_pause(f->easy, CURLPAUSE_CONT);
                                fr->in_curl--;
                        }
                fetcher_process(fr);
        }
        return 0;
}

/* --- the public side --- */

int fetcher_new(sd_event *event, Fetcher **ret) {
        Fetcher *fr;

        if (!event || !ret)
                return -EINVAL;
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                return -EIO;

        fr = calloc(1, sizeof(*fr));
        if (!fr)
                return -ENOMEM;
        fr->n_ref = 1;
        fr->event = sd_event_ref(event);
        fr->efd = -EBADF;
        fr->low_speed_limit = 1024;
        fr->low_speed_time = 60;
        fr->queue_tail = &fr->queue;
        fr->returned_tail = &fr->returned;
        (void) pthread_mutex_init(&fr->lock, NULL);
        (void) pthread_cond_init(&fr->cond, NULL);
        fr->multi = curl_multi_init();
        if (!fr->multi ||
            curl_multi_setopt(fr->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket) != CURLM_OK ||
            curl_multi_setopt(fr->multi, CURLMOPT_SOCKETDATA, fr) != CURLM_OK ||
            curl_multi_setopt(fr->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer) != CURLM_OK ||
            curl_multi_setopt(fr->multi, CURLMOPT_TIMERDATA, fr) != CURLM_OK) {
                fetcher_free(fr);
                return -ENOMEM;
        }
        *ret = fr;
        return 0;
}

Fetcher *fetcher_free(Fetcher *fr) {
        if (!fr || fr->dead)
                return NULL;

        while (fr->fetches)
                fetch_free(fr->fetches); /* .part stays: resumed after a restart */

        fr->dead = true;
        if (fr->multi)
                (void) curl_multi_cleanup(fr->multi); /* may still report CURL_POLL_REMOVE */
        fr->multi = NULL;
        while (fr->ios) {
                CurlIo *io = fr->ios;
                fr->ios = io->next;
                sd_event_source_disable_unref(io->source);
                free(io);
        }
        fr->timer = sd_event_source_disable_unref(fr->timer);

        worker_stop(fr);
        while (fr->returned) {
                Job *j = fr->returned;
                fr->returned = j->next;
                sink_unref_locked(j->sink);
                free(j);
        }
        buffers_trim(fr);
        fr->efd_source = sd_event_source_disable_unref(fr->efd_source);
        fr->efd = safe_close(fr->efd);
        (void) pthread_cond_destroy(&fr->cond);
        (void) pthread_mutex_destroy(&fr->lock);

        fr->event = sd_event_unref(fr->event);
        fetcher_unref(fr);
        return NULL;
}

void fetcher_set_low_speed(Fetcher *fr, unsigned long limit, unsigned long seconds) {
        if (!fr)
                return;
        fr->low_speed_limit = (long) limit;
        fr->low_speed_time = (long) seconds;
}

void fetch_cancel(Fetch *f) {
        if (!f)
                return;
        if (f->fetcher && f->fetcher->in_curl && f->in_multi) {
                /* libcurl is on the stack: it must not lose the handle now. fetcher_process() frees it. */
                f->cancelled = true;
                return;
        }
        log_debug("Cancelled the download of %s", f->url_redacted);
        unlink_part(f);
        fetch_free(f);
}

static bool header_name_valid(const char *s) {
        if (isempty(s))
                return false;
        for (; *s; s++)
                if (!isalnum((unsigned char) *s) && !strchr("!#$%&'*+-.^_`|~", *s))
                        return false;
        return true;
}

int fetch_start(Fetcher *fr, const FetchRequest *req, fetch_progress_t progress, fetch_done_t done,
                void *userdata, Fetch **ret, HydraError *err) {
        _cleanup_(fetch_freep) Fetch *f = NULL;
        int r;

        if (!fr || fr->dead || !req || !done)
                return hydra_error_set(err, -EINVAL, "fetch: invalid arguments");
        if (isempty(req->url))
                return hydra_error_set(err, -EINVAL, "fetch: no URL");
        if (isempty(req->cache_dir))
                return hydra_error_set(err, -EINVAL, "fetch: no cache directory");

        f = calloc(1, sizeof(*f));
        if (!f)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        f->resp_range_start = -1;
        f->progress = progress;
        f->done = done;
        f->userdata = userdata;

        f->url = strdup(req->url);
        f->url_redacted = url_display(req->url);
        f->entry = fetch_cache_entry(req->cache_dir, req->url);
        f->name = url_file_name(req->url);
        if (!f->url || !f->url_redacted || !f->entry || !f->name || url_userinfo_password(f->url, &f->url_password) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (asprintf(&f->data_path, "%s/data", f->entry) < 0 || asprintf(&f->part_path, "%s/data.part", f->entry) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        if (!url_scheme_supported(req->url))
                return hydra_error_set(err, -EPROTONOSUPPORT, "fetch %s: only http, https and file URLs are supported",
                                       f->url_redacted);
        if (strpbrk(req->url, "\r\n") || (req->sums_url && strpbrk(req->sums_url, "\r\n")))
                return hydra_error_set(err, -EINVAL, "fetch: a URL must not contain line breaks");

        if (req->user) {
                f->user = strdup(req->user);
                f->password = strdup(strempty(req->password));
                if (!f->user || !f->password)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (req->token) {
                const char *h = req->token_header ?: FETCH_DEFAULT_TOKEN_HEADER;
                if (!header_name_valid(h))
                        return hydra_error_set(err, -EINVAL, "fetch %s: invalid token header name", f->url_redacted);
                if (strpbrk(req->token, "\r\n"))
                        /* never quote the token itself */
                        return hydra_error_set(err, -EINVAL, "fetch %s: the token contains a line break",
                                               f->url_redacted);
                if (asprintf(&f->token_line, "%s: %s", h, req->token) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        f->secrets[0] = req->password ? f->password : NULL;
        f->secrets[1] = req->token ? f->token_line + strlen(f->token_line) - strlen(req->token) : NULL;
        f->secrets[2] = f->url_password;

        if (req->checksum && parse_checksum(req->checksum, &f->expected_algo, f->expected_hex) < 0)
                return hydra_error_set(err, -EINVAL,
                                       "fetch %s: invalid checksum '%s' (expected sha256:HEX or sha512:HEX)",
                                       f->url_redacted, req->checksum);
        if (req->sums_url) {
                if (!url_scheme_supported(req->sums_url)) {
                        _cleanup_free_ char *r_sums = url_display(req->sums_url);
                        return hydra_error_set(err, -EPROTONOSUPPORT,
                                               "fetch %s: only http, https and file URLs are supported",
                                               strempty(r_sums));
                }
                f->sums_url = strdup(req->sums_url);
                f->sums_url_redacted = url_display(req->sums_url);
                if (!f->sums_url || !f->sums_url_redacted ||
                    url_userinfo_password(f->sums_url, &f->sums_url_password) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                f->secrets[3] = f->sums_url_password;
                if (isempty(f->name))
                        return hydra_error_set(err, -EINVAL, "fetch %s: the URL names no file to look up in %s",
                                               f->url_redacted, f->sums_url_redacted);
        }

        for (Fetch *o = fr->fetches; o; o = o->next)
                if (streq(o->entry, f->entry))
                        return hydra_error_set(err, -EBUSY, "%s is already being downloaded", f->url_redacted);

        r = mkdir_p(f->entry, 0755);
        if (r < 0)
                return hydra_error_set(err, r, "create the cache directory '%s': %s", f->entry, strerror(-r));
        r = meta_load(f);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");

        f->fetcher = fr;
        f->next = fr->fetches;
        if (fr->fetches)
                fr->fetches->prev = f;
        fr->fetches = f;

        if (f->sums_url && f->expected_algo == DIGEST_NONE) {
                f->phase = PHASE_SUMS;
                f->hops = 0;
                /* the SUMS file gets the credentials only if it lives where the file does */
                f->send_auth = same_origin(f->sums_url, f->url);
                log_debug("Fetching the checksum of %s from %s", f->url_redacted, f->sums_url_redacted);
                r = transfer_start(f, f->sums_url);
                if (r < 0)
                        return hydra_error_set(err, r, "fetch %s", f->sums_url_redacted);
        } else {
                r = fetch_proceed(f, err);
                if (r < 0)
                        return r;
        }

        if (ret)
                *ret = f;
        TAKE_PTR(f);
        return 0;
}
