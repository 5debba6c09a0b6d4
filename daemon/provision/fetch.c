/* SPDX-License-Identifier: MIT */
/* The downloader's curl glue: libcurl's multi interface on sd-event, the way systemd's src/import/curl-util.c
 * glues them: curl tells us which sockets to watch (CURLMOPT_SOCKETFUNCTION: one io source per socket) and when
 * to wake it up (CURLMOPT_TIMERFUNCTION: one timer); we hand readiness back with curl_multi_socket_action() and
 * collect finished transfers with curl_multi_info_read(). Its callbacks decide what a response means (redirect,
 * 304, resume, cache fallback); they never touch the disk beyond a read or a stat.
 *
 * Everything that writes goes to the sink (fetch_sink.c): one worker thread per Fetcher that writes, hashes,
 * fsyncs, renames and unlinks, in the order it was asked, and reports back on the loop. When it falls behind, the
 * transfer is paused (CURL_WRITEFUNC_PAUSE) instead of the loop waiting. What needs no I/O at all (checksums, SUMS
 * files, headers, the cache key, meta.json's content) is in fetch_meta.c; URLs are taken apart in url.c.
 *
 * A Fetch goes through up to four steps: the SUMS file (into memory), preparing data.part (removed, or kept and
 * hashed for resuming, on the worker), the download itself, and committing data into the cache (on the worker).
 * Each ends on the loop, outside of libcurl's callbacks, where the next one starts; the done callback runs once
 * the worker has done everything the Fetch queued, so that the cache is as the result says. */
#include <curl/curl.h>
#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fetch.h"
#include "fetch_meta.h"
#include "fetch_sink.h"
#include "log.h"
#include "macro.h"
#include "store.h"
#include "url.h"

#define USEC_PER_SEC 1000000ULL
#define USEC_PER_MSEC 1000ULL

#define FETCH_BUFFER_SIZE (512L * 1024L)            /* CURLOPT_BUFFERSIZE: fewer, larger recv() calls */
#define FETCH_MAX_REDIRECTS 5
#define FETCH_SUMS_MAX (1024 * 1024)                /* a SUMS file larger than this is not one */
#define FETCH_PROGRESS_USEC (250 * USEC_PER_MSEC)
#define FETCH_CONNECT_TIMEOUT_SEC 30L
#define FETCH_USER_AGENT "hydrad/0.1"
#define FETCH_DEFAULT_TOKEN_HEADER "PRIVATE-TOKEN"
#define FETCH_META_MAX (64 * 1024)
/* Bytes one wake-up of the loop takes from libcurl before the transfer pauses until the next iteration: libcurl
 * reads a socket up to 100 times per call, 50 MiB of copying on a fast link, during which nothing else runs. */
#define FETCH_DISPATCH_BYTES (1U * 1024U * 1024U)

typedef enum FetchPhase {
        PHASE_SUMS,    /* the SUMS file, into memory */
        PHASE_PREPARE, /* the worker removes data.part, or hashes it for resuming */
        PHASE_MAIN,    /* the file itself, into data.part */
        PHASE_FINISH,  /* the transfer ended; the worker writes (and syncs) what is left of it */
        PHASE_COMMIT,  /* verified; the worker renames data.part into data and writes meta.json */
        PHASE_DONE,    /* result known, delivered once the worker has caught up */
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
        SinkWorker *worker; /* the disk side */
        uint64_t dispatch_bytes;      /* taken from libcurl since the loop last woke us */
        sd_event_source *budget_defer; /* resumes the transfers paused for FETCH_DISPATCH_BYTES */
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
        char expected_hex[FETCH_HEX_MAX];

        fetch_progress_t progress;
        fetch_done_t done;
        void *userdata;

        /* The current transfer. */
        CURL *easy;
        bool in_multi;
        bool paused; /* waiting for a free buffer */
        bool budget_paused; /* waiting for the next iteration of the loop (FETCH_DISPATCH_BYTES) */
        char *cur_url; /* this hop's URL: url, or where a redirect sent us */
        bool cur_is_file; /* cur_url is a file:// URL (libcurl cannot pause those) */
        unsigned hops;
        bool send_auth; /* false once a redirect left the first URL's origin */
        bool revalidate;
        bool restarted; /* 416 on resume: tried again from zero once */
        struct curl_slist *headers;
        char errbuf[CURL_ERROR_SIZE];
        BodyMode body_mode;
        char *resp_etag, *resp_last_modified;
        int64_t resp_range_start; /* Content-Range's first byte; -1: none */
        HydraError error;         /* a local failure inside a callback (a bad Content-Range) */

        /* The cache entry. */
        json_t *meta;
        bool have_data; /* data with a meta.json whose size and sha256 fit */

        /* The download. */
        Sink *sink;      /* the entry's files, on the worker; for the whole life of the Fetch */
        bool part_open;  /* data.part was created (or kept for resuming) and not unlinked since */
        FetchBuffer *wbuf; /* being filled */
        uint64_t offset; /* bytes data.part had when this transfer started */
        uint64_t bytes;  /* bytes of the file received so far, .part included */
        uint64_t total;  /* expected size of the file; 0: unknown */
        bool finish_ok;  /* PHASE_FINISH: the transfer succeeded (else: interrupted) */
        CURLcode finish_cc;

        char *sums;
        size_t sums_len;

        uint64_t start_usec, progress_usec, progress_bytes;

        /* The outcome. */
        int result_r;
        char sha256_hex[FETCH_HEX_MAX];
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

static bool url_is_file(const char *url) {
        return url_scheme_is(url, "file");
}

static bool url_scheme_supported(const char *url) {
        return url_scheme_is(url, "http") || url_scheme_is(url, "https") || url_is_file(url);
}

uint64_t fetcher_ticket(Fetcher *fr) {
        return fr && fr->worker ? sink_worker_ticket(fr->worker) : 0;
}

void fetcher_wait(Fetcher *fr, uint64_t ticket) {
        if (fr && fr->worker && ticket > 0)
                sink_worker_wait(fr->worker, ticket);
}

char *fetch_cache_entry(const char *cache_dir, const char *url) {
        char key[65];
        char *s;

        if (!cache_dir || !url || fetch_cache_key(url, key) < 0)
                return NULL;
        if (asprintf(&s, "%s/%s", cache_dir, key) < 0)
                return NULL;
        return s;
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

/* --- meta.json: read here (a small read), written by the worker --- */

/* Queues meta.json's new content: written after whatever the worker was handed before (its data), before
 * whatever comes after. Failures are logged when the worker reports back (sink_meta_error). */
static void meta_save(Fetch *f) {
        _cleanup_free_ char *text = fetch_meta_format(f->meta);
        int r = text ? sink_save_meta(f->sink, text) : -ENOMEM;

        if (r < 0)
                log_warning_errno(r, "Cannot write the cache metadata of %s, ignoring: %m", f->url_redacted);
}

static void meta_log_error(Fetch *f) {
        int r = sink_meta_error(f->sink);

        if (r < 0)
                log_warning_errno(r, "Cannot write the cache metadata of %s, ignoring: %m", f->url_redacted);
}

static int meta_load(Fetch *f) {
        _cleanup_free_ void *data = NULL;
        _cleanup_free_ char *path = NULL;
        struct stat st;
        size_t n = 0;
        int r;

        f->meta = json_unref(f->meta);
        r = store_read(f->entry, "meta.json", FETCH_META_MAX, &data, &n, NULL);
        if (r < 0 && r != -ENOENT)
                log_debug_errno(r, "Cannot read meta.json of %s, ignoring: %m", f->url_redacted);
        f->meta = fetch_meta_parse(r >= 0 ? data : NULL, n);
        if (!f->meta)
                return -ENOMEM;

        /* An older hydrad stored the URL with its query values, readable by all: rewrite it the way it is
         * written now (the URL as shown, mode 0600). */
        if (r >= 0 && json_object_size(f->meta) > 0 && asprintf(&path, "%s/meta.json", f->entry) >= 0 &&
            lstat(path, &st) >= 0 && ((st.st_mode & 0077) != 0 || fetch_meta_url_stale(f->meta, f->url_redacted))) {
                if (json_object_get(f->meta, "url"))
                        (void) json_object_set_new(f->meta, "url", json_string(f->url_redacted));
                meta_save(f);
        }

        f->have_data = stat(f->data_path, &st) >= 0 && S_ISREG(st.st_mode) &&
                       fetch_meta_describes(f->meta, (uint64_t) st.st_size);
        return 0;
}

static const char *meta_string(Fetch *f, const char *key) {
        return fetch_meta_string(f->meta, key);
}

/* --- the Fetch object --- */

static void buffer_put(Fetcher *fr, FetchBuffer *b) {
        sink_worker_buffer_put(fr->worker, b);
}

static void fetch_detach(Fetch *f) {
        Fetcher *fr = f->fetcher;

        if (f->easy) {
                if (f->in_multi && fr && !fr->dead)
                        (void) curl_multi_remove_handle(fr->multi, f->easy);
                f->in_multi = false;
                curl_easy_cleanup(f->easy);
                f->easy = NULL;
        }
        /* what is queued for data.part still gets written: a .part kept for resuming then has all of it */
        sink_release(TAKE_PTR(f->sink), false);
        if (!fr)
                return;
        buffer_put(fr, TAKE_PTR(f->wbuf));

        if (f->prev)
                f->prev->next = f->next;
        else
                fr->fetches = f->next;
        if (f->next)
                f->next->prev = f->prev;
        f->prev = f->next = NULL;
        f->fetcher = NULL;
        if (!fr->fetches)
                sink_worker_buffers_trim(fr->worker);
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

/* Removes data.part (on the worker); data queued for it before is dropped. */
static void unlink_part(Fetch *f) {
        if (f->fetcher)
                buffer_put(f->fetcher, TAKE_PTR(f->wbuf));
        f->part_open = false;
        if (f->sink && sink_unlink(f->sink) < 0 && unlink(f->part_path) < 0 && errno != ENOENT)
                log_debug_errno(errno, "Cannot remove '%s', ignoring: %m", f->part_path);
}

/* fetch_cancel(): the .part goes, what is still queued for it is skipped, no callback. */
static void fetch_drop(Fetch *f) {
        unlink_part(f);
        sink_release(TAKE_PTR(f->sink), true);
        fetch_free(f);
}

/* Delivers the outcome and frees f. The Fetch leaves the fetcher first, so the callback may free it. */
static void fetch_deliver(Fetch *f) {
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

/* The outcome is known: delivered from the loop once the worker has done all f queued before (never from
 * fetch_start() itself). */
static int fetch_complete_later(Fetch *f) {
        f->phase = PHASE_DONE;
        return sink_barrier(f->sink);
}

static void fetch_complete(Fetch *f) {
        if (fetch_complete_later(f) < 0)
                fetch_deliver(f); /* cannot wait for the worker: deliver now */
}

static void fetch_fail(Fetch *f, int r) {
        if (f->error.code >= 0 || f->error.message[0] == '\0')
                (void) hydra_error_set(&f->error, r, "download %s failed", f->url_redacted);
        f->result_r = f->error.code;
        fetch_complete(f);
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

static size_t on_header(char *buf, size_t size, size_t n, void *userdata) {
        Fetch *f = userdata;
        size_t len = size * n;
        char *v;

        if (len >= 5 && strncasecmp(buf, "HTTP/", 5) == 0) {
                /* a new response (after a 100 Continue, or a redirect): forget the previous one's headers */
                f->resp_etag = mfree(f->resp_etag);
                f->resp_last_modified = mfree(f->resp_last_modified);
                f->resp_range_start = -1;
        } else if ((v = fetch_header_value(buf, len, "ETag"))) {
                free(f->resp_etag);
                f->resp_etag = v;
        } else if ((v = fetch_header_value(buf, len, "Last-Modified"))) {
                free(f->resp_last_modified);
                f->resp_last_modified = v;
        } else if ((v = fetch_header_value(buf, len, "Content-Range"))) {
                f->resp_range_start = fetch_content_range_start(v);
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
        bool restart = false;
        int r;

        if (code >= 300 && code < 400)
                return BODY_DISCARD;
        if (code >= 400)
                return BODY_ABORT; /* the status says it all; no need for the server's error page */
        if (f->phase == PHASE_SUMS)
                return BODY_WRITE;

        if (f->offset > 0 && code != 206) {
                log_info("Server ignored the Range request for %s, downloading it from the start", f->url_redacted);
                restart = true;
        } else if (code == 206 && f->resp_range_start != (int64_t) f->offset) {
                (void) hydra_error_set(&f->error, -EPROTO,
                                       "download %s: asked for bytes from %" PRIu64 ", the server sent %" PRIi64,
                                       f->url_redacted, f->offset, f->resp_range_start);
                return BODY_ABORT;
        }

        if (restart || !f->part_open) {
                /* data.part from zero: created, or truncated, with the digests, on the worker before any byte
                 * of this body (a failure there stops the transfer at the next write: sink_failed) */
                r = sink_create(f->sink);
                if (r < 0) {
                        (void) hydra_error_set(&f->error, r, "create '%s': %s", f->part_path, strerror(-r));
                        return BODY_ABORT;
                }
                f->part_open = true;
                f->offset = f->bytes = 0;
        }

        (void) curl_easy_getinfo(f->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
        f->total = cl >= 0 ? f->offset + (uint64_t) cl : 0;
        f->start_usec = now_usec();
        f->progress_usec = 0;

        /* Remember which version of the file data.part holds, for If-Range when resuming it: durable before the
         * first byte of it is written (the worker runs the two in this order). */
        if ((f->resp_etag || f->resp_last_modified) &&
            fetch_meta_set_part(f->meta, f->resp_etag, f->resp_last_modified) >= 0)
                meta_save(f);
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
        FetchBuffer *b = TAKE_PTR(f->wbuf);
        int r;

        if (!b)
                return 0;
        if (b->len == 0) {
                buffer_put(f->fetcher, b);
                return 0;
        }
        r = sink_write(f->sink, b);
        if (r < 0) {
                buffer_put(f->fetcher, b);
                return hydra_error_set(&f->error, r, "write '%s': %s", f->part_path, strerror(-r));
        }
        return 0;
}

static void buffers_put(Fetcher *fr, FetchBuffer *l) {
        while (l) {
                FetchBuffer *b = l;
                l = b->next;
                buffer_put(fr, b);
        }
}

static void fetcher_process(Fetcher *fr);

/* The next iteration of the loop: transfers paused for FETCH_DISPATCH_BYTES go on. */
static int on_budget(sd_event_source *s, void *userdata) {
        _cleanup_(fetcher_unrefp) Fetcher *fr = fetcher_ref(userdata);

        fr->dispatch_bytes = 0;
        for (Fetch *f = fr->fetches; f && !fr->dead; f = f->next)
                if (f->budget_paused) {
                        f->budget_paused = false;
                        if (!f->in_multi)
                                continue;
                        fr->in_curl++;
                        (void) curl_easy_pause(f->easy, CURLPAUSE_CONT);
                        fr->in_curl--;
                }
        if (!fr->dead)
                fetcher_process(fr);
        return 0;
}

static int budget_arm(Fetcher *fr) {
        int r;

        if (!fr->budget_defer) {
                r = sd_event_add_defer(fr->event, &fr->budget_defer, on_budget, fr);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(fr->budget_defer, "fetch-budget");
        }
        return sd_event_source_set_enabled(fr->budget_defer, SD_EVENT_ONESHOT);
}

static size_t on_write(char *ptr, size_t size, size_t n, void *userdata) {
        Fetch *f = userdata;
        size_t len = size * n, room;
        FetchBuffer *spare = NULL;

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
        if (sink_failed(f->sink)) {
                /* the worker could not create or write data.part: main_done() reports it */
                f->body_mode = BODY_ABORT;
                return 0;
        }

        if (f->fetcher->dispatch_bytes >= FETCH_DISPATCH_BYTES && !f->cur_is_file && budget_arm(f->fetcher) >= 0) {
                f->budget_paused = true;
                return CURL_WRITEFUNC_PAUSE;
        }

        /* libcurl hands over 16 KiB at a time; they are gathered into 1 MiB buffers for the worker. Take every
         * buffer this piece needs first: a paused write must leave nothing behind, libcurl delivers it again. */
        room = f->wbuf ? FETCH_WRITE_BUFFER_SIZE - f->wbuf->len : 0;
        for (size_t need = len > room ? len - room : 0; need > 0;) {
                /* libcurl cannot pause a file:// transfer: wait for the worker instead */
                FetchBuffer *b = f->cur_is_file ? sink_worker_buffer_wait(f->fetcher->worker)
                                                : sink_worker_buffer_get(f->fetcher->worker);
                if (!b) {
                        buffers_put(f->fetcher, spare);
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
                        buffers_put(f->fetcher, spare);
                        f->body_mode = BODY_ABORT;
                        return 0;
                }
        }

        f->fetcher->dispatch_bytes += size * n;
        if (f->progress)
                report_progress(f);
        return f->cancelled ? 0 : size * n;
}

/* --- the glue: libcurl's sockets and timer on sd-event --- */

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

        fr->dispatch_bytes = 0;
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

        fr->dispatch_bytes = 0;
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
        f->cur_is_file = url_is_file(u);
        f->budget_paused = false;

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

/* The checksum is known (or there is none): use the cache, or have the worker prepare data.part (kept and
 * hashed for resuming, or removed), then revalidate or download (on_sink_done). */
static int fetch_proceed(Fetch *f, HydraError *err) {
        const char *algo = digest_algo_to_string(f->expected_algo);
        bool resume;
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

        /* Resume unless the URL is a local file (copying it again is cheap) or the .part cannot be told apart
         * from a left-over next to good data. */
        resume = !url_is_file(f->url) && (!f->have_data || json_object_get(f->meta, "part"));
        r = sink_prepare(f->sink, resume, f->expected_algo == DIGEST_SHA512);
        if (r < 0)
                return hydra_error_set(err, r, "prepare '%s': %s", f->part_path, strerror(-r));
        f->phase = PHASE_PREPARE;
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

        /* libcurl resolves a relative Location against the URL it fetched */
        if (curl_easy_getinfo(f->easy, CURLINFO_REDIRECT_URL, &location) != CURLE_OK || !location)
                return 0;
        if (++f->hops > FETCH_MAX_REDIRECTS)
                return hydra_error_set(&f->error, -ELOOP, "%s: more than %d redirects", url_redacted,
                                       FETCH_MAX_REDIRECTS);
        if (!url_scheme_is(location, "http") && !url_scheme_is(location, "https"))
                return hydra_error_set(&f->error, -EPROTONOSUPPORT,
                                       "%s: redirect to a URL that is not http or https refused", url_redacted);
        target = strdup(location); /* owned by the easy handle, which transfer_start() reconfigures */
        shown = url_display(location); /* a signed Location carries its credentials in the query */
        if (!target || !shown)
                return hydra_error_set(&f->error, -ENOMEM, "out of memory");
        log_debug("%s: HTTP %ld, redirected to %s", url_redacted, code, shown);
        if (f->send_auth && !url_same_origin(f->cur_url, target)) {
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

        r = fetch_sums_lookup(f->sums ?: "", f->sums_len, f->name, &f->expected_algo, f->expected_hex);
        f->sums = mfree(f->sums);
        f->sums_len = 0;
        if (r < 0) {
                fetch_fail(f, hydra_error_set(&f->error, r, "%s lists no checksum for '%s'", u, f->name));
                return;
        }
        log_debug("%s: %s of '%s' is %s", u, digest_algo_to_string(f->expected_algo), f->name, f->expected_hex);

        r = fetch_proceed(f, &e);
        if (r < 0) {
                f->error = e;
                fetch_fail(f, r);
        }
}

/* The worker has written and synced everything: verify, then have it commit data.part as data. */
static int main_finish(Fetch *f) {
        char got[FETCH_HEX_MAX], got512[FETCH_HEX_MAX];
        _cleanup_free_ char *text = NULL;
        const char *actual;
        json_t *m;
        int r;

        if (sink_digests(f->sink, got, got512) < 0)
                return hydra_error_set(&f->error, -EIO, "digest of %s", f->url_redacted);

        actual = f->expected_algo == DIGEST_SHA512 ? got512 : got;
        if (f->expected_algo != DIGEST_NONE && !streq(actual, f->expected_hex)) {
                const char *algo = digest_algo_to_string(f->expected_algo);
                /* Nothing of this is worth keeping: the .part is wrong, and a data file from before is not what
                 * the server serves any more. */
                (void) sink_discard(f->sink);
                return hydra_error_set(&f->error, -EBADMSG, "checksum mismatch for %s: expected %s:%s, got %s:%s",
                                       f->url_redacted, algo, f->expected_hex, algo, actual);
        }

        m = fetch_meta_new(f->url_redacted, f->resp_etag, f->resp_last_modified, f->bytes, got, got512,
                           (int64_t) time(NULL));
        text = m ? fetch_meta_format(m) : NULL;
        if (!text) {
                json_decref(m);
                return hydra_error_set(&f->error, -ENOMEM, "out of memory");
        }
        r = sink_commit(f->sink, text);
        if (r < 0) {
                json_decref(m);
                return hydra_error_set(&f->error, r, "rename '%s' into '%s': %s", f->part_path, f->data_path,
                                       strerror(-r));
        }
        json_decref(f->meta);
        f->meta = m;
        memcpy(f->sha256_hex, got, sizeof(got));
        f->phase = PHASE_COMMIT;
        return 0;
}

/* The worker committed data (or failed to). */
static void main_committed(Fetch *f) {
        const char *op = NULL;
        int r = sink_error(f->sink, &op);

        if (r < 0) {
                if (op && streq(op, "rename"))
                        (void) hydra_error_set(&f->error, r, "rename '%s' into '%s': %s", f->part_path,
                                               f->data_path, strerror(-r));
                else
                        (void) hydra_error_set(&f->error, r, "remove the old metadata in '%s': %s", f->entry,
                                               strerror(-r));
                unlink_part(f);
                fetch_fail(f, r);
                return;
        }
        f->part_open = false;
        f->result.from_cache = false;
        f->result_r = 0;
        log_info("Downloaded %s: %" PRIu64 " bytes, sha256 %s", f->url_redacted, f->bytes, f->sha256_hex);
        fetch_deliver(f); /* everything f queued is done */
}

/* The transfer ended, well (ok) or interrupted: the worker writes what is left, then reports back. */
static int finish_start(Fetch *f, bool ok, CURLcode cc) {
        int r;

        if (!f->part_open) {
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
        r = sink_finish(f->sink, ok);
        if (r < 0)
                return hydra_error_set(&f->error, r, "write '%s': %s", f->part_path, strerror(-r));
        f->phase = PHASE_FINISH;
        f->finish_ok = ok;
        f->finish_cc = cc;
        return 1;
}

/* The worker is done with a reported job of f's sink (see fetch_sink.h). */
static void on_sink_done(Sink *s, SinkOp op, void *owner) {
        Fetch *f = owner;
        const char *u = f->url_redacted, *what = NULL;
        CURLcode cc = f->finish_cc;
        uint64_t size;
        int r;

        meta_log_error(f);
        if (op == SINK_BARRIER) {
                if (f->phase == PHASE_DONE)
                        fetch_deliver(f);
                return;
        }
        if (op == SINK_COMMIT) {
                main_committed(f);
                return;
        }

        r = sink_error(s, &what);
        if (r < 0) {
                (void) hydra_error_set(&f->error, r, "%s '%s': %s", what, f->part_path, strerror(-r));
                unlink_part(f);
                fetch_fail(f, f->error.code);
                return;
        }

        size = sink_size(s);
        if (op == SINK_PREPARE) {
                f->offset = f->bytes = size;
                f->part_open = size > 0;
                if (size > 0)
                        f->revalidate = false;
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
                }
                return;
        }

        /* interrupted: what arrived stays for the next attempt */
        if (size == 0)
                unlink_part(f);
        if (f->revalidate && f->have_data) {
                /* a newer version was coming: the verified copy we have still serves */
                log_warning("Download of a newer %s interrupted after %" PRIu64 " bytes (%s), using the cached copy",
                            u, size, curl_error_text(f, cc));
                r = fetch_use_cache(f, false, "the download of a newer version was interrupted, using the cached copy");
                if (r < 0)
                        fetch_fail(f, hydra_error_set(&f->error, r, "out of memory"));
                else
                        fetch_complete(f);
                return;
        }
        (void) hydra_error_set(&f->error, curl_code_to_errno(cc),
                               "download %s interrupted after %" PRIu64 " bytes%s: %s", u, size,
                               size > 0 ? " (kept for resuming)" : "",
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
        if (sink_failed(f->sink) && finish_start(f, false, cc) > 0)
                return; /* the worker could not write data.part: on_sink_done() says why */

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
                if (f->part_open) {
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
        f->budget_paused = false;

        if (f->cancelled) {
                fetch_drop(f);
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
                if (f->cancelled)
                        fetch_drop(f);
        }
}

/* After the worker reported back: buffers a cancelled download held came back, or one a paused transfer waits
 * for is free. */
static void on_worker_wakeup(bool buffers_free, void *userdata) {
        _cleanup_(fetcher_unrefp) Fetcher *fr = fetcher_ref(userdata);

        if (fr->dead)
                return;
        if (!fr->fetches)
                sink_worker_buffers_trim(fr->worker);
        if (!buffers_free)
                return;
        fr->dispatch_bytes = 0;
        for (Fetch *f = fr->fetches; f; f = f->next)
                if (f->paused && f->in_multi) {
                        f->paused = false;
                        fr->in_curl++;
                        (void) curl_easy_pause(f->easy, CURLPAUSE_CONT);
                        fr->in_curl--;
                }
        fetcher_process(fr);
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
        fr->low_speed_limit = 1024;
        fr->low_speed_time = 60;
        fr->multi = curl_multi_init();
        if (!fr->multi || sink_worker_new(event, on_sink_done, on_worker_wakeup, fr, &fr->worker) < 0 ||
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
        fr->budget_defer = sd_event_source_disable_unref(fr->budget_defer);

        fr->worker = sink_worker_free(fr->worker); /* lets it write what it was handed */

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
        fetch_drop(f);
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
        if (!f->url || !f->url_redacted || !f->entry || url_password(f->url, &f->url_password) < 0)
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

        if (req->checksum && fetch_parse_checksum(req->checksum, &f->expected_algo, f->expected_hex) < 0)
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
                    url_password(f->sums_url, &f->sums_url_password) < 0)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                f->secrets[3] = f->sums_url_password;
                r = url_file_name(req->url, &f->name);
                if (r == -ENOMEM)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
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
        f->sink = sink_new(fr->worker, f->entry, f);
        if (!f->sink)
                return hydra_error_set(err, -ENOMEM, "out of memory");
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
                f->send_auth = url_same_origin(f->sums_url, f->url);
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
