/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "error.h"

/* Downloads into the cache with libcurl's multi interface, driven by the sd-event loop (nothing blocks it; file
 * writes, hashing and fsync run on one worker thread, see below). One Fetcher per daemon; one Fetch per file being
 * fetched.
 *
 * Cache layout, per URL (credentials never part of the key): CACHE_DIR/<sha256 of the URL>/
 *     data        the verified file, exactly as served
 *     data.part   an interrupted download; resumed with a Range request
 *     meta.json   url (as url_display() shows it), etag, last_modified, size, sha256/sha512 of data, time; mode
 *                 0600 (one written by an older hydrad is rewritten so when next read)
 * A file appears as data only once complete and verified (write .part, fsync, verify, rename). A failed or
 * wrong-checksum download leaves no data file; .part is kept only when the transfer was interrupted (resume).
 *
 * Cache hit: with a checksum that matches meta.json, no request is made; otherwise a conditional request
 * (If-None-Match / If-Modified-Since) revalidates it (304: hit). When the server cannot be reached the cached
 * file is used and the done callback's notice says so.
 *
 * Secrets (password, token) go to libcurl through CURLOPT_USERNAME/PASSWORD and CURLOPT_HTTPHEADER only; they
 * never appear in a path, a log line, an error or meta.json. Nor do the query values of a URL (signed URLs,
 * ?private_token=): every URL, the SUMS url's and a redirect's included, is shown as url_display() makes it, and
 * libcurl's error text is scrubbed of them too. Only libcurl gets the URL whole.
 *
 * Details of this implementation (three files: fetch.c the curl glue, fetch_sink.c the disk worker, fetch_meta.c
 * the pure helpers):
 * - Every write to the cache (data.part's bytes, their hash, fsync, meta.json, rename, unlink) is done by one
 *   worker thread per Fetcher (SHA-256 costs about as much as a local transfer; an fsync, or an unlink or rename
 *   that frees a large file's blocks, may take tens of milliseconds): handed over through a queue, run in that
 *   order, reported back to the loop through an eventfd. Callbacks all run on the loop, the done callback once the
 *   worker has done everything its Fetch queued (the cache is then as the result says). When the worker falls
 *   behind, the transfer pauses; so does one that took 1 MiB in one wake-up of the loop, until the next. On resume
 *   the worker also reads back and hashes the existing .part before the Range request.
 * - The old meta.json is removed (durably) before the rename and the new one written after it: a crash in between
 *   leaves data without meta.json, which is never a cache hit (downloaded again). The "part" record below is
 *   durable before the first byte of the response it describes is written.
 * - Redirects (at most 5, to http/https only) are followed by fetch.c itself rather than by libcurl, so that a
 *   redirect to another origin (scheme, host, port) drops the password AND the token header: libcurl drops only
 *   the former. A SUMS url gets the credentials only when it has the URL's origin.
 * - meta.json may also hold "part": the ETag / Last-Modified of the response data.part came from, sent back as
 *   If-Range on resume so that a file changed in between restarts from zero instead of being spliced.
 * - A .part is kept for: a connection dropped or timed out (curl 7, 18, 28, 52, 55, 56, ...) and HTTP 5xx.
 * - Server unreachable (connection-level failure or HTTP 5xx before any byte of a new body) while revalidating
 *   or while fetching the SUMS url, or the download of a newer version interrupted: the cached copy is used, with
 *   a notice.
 * - Two fetches of the same URL in one Fetcher at a time: the second gets -EBUSY. */

typedef struct Fetcher Fetcher;
typedef struct Fetch Fetch;

typedef struct FetchRequest {
        const char *url;           /* http://, https:// or file:// */
        const char *user;          /* basic auth, optional */
        const char *password;
        const char *token;         /* sent as "<token_header>: <token>" */
        const char *token_header;  /* NULL: PRIVATE-TOKEN */
        const char *checksum;      /* "sha256:HEX" / "sha512:HEX", optional */
        const char *sums_url;      /* SHA256SUMS / SHA512SUMS listing the URL's file name, optional */
        const char *cache_dir;     /* CACHE_DIR */
} FetchRequest;

typedef struct FetchProgress {
        uint64_t bytes;            /* including what a resumed .part already had */
        uint64_t total;            /* 0: unknown */
        uint64_t rate;             /* bytes/s */
} FetchProgress;

typedef struct FetchResult {
        const char *path;          /* CACHE_DIR/<key>/data */
        const char *sha256;        /* hex digest of data */
        bool from_cache;           /* no body was transferred (checksum match or 304) */
        bool revalidated;          /* a conditional request answered 304 */
        const char *notice;        /* e.g. "server unreachable, using the cached copy"; NULL if none */
} FetchResult;

/* Called at most every 250 ms while bytes arrive (the first time at the first bytes). It runs inside libcurl's
 * write callback: it may call fetch_cancel() (any fetch), it must not call fetcher_free(). */
typedef void (*fetch_progress_t)(Fetch *f, const FetchProgress *p, void *userdata);
/* Called once, on the loop. r < 0: err says what failed (the URL as url_display() shows it). After this
 * call the Fetch is freed by the fetcher: do not use it. */
typedef void (*fetch_done_t)(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata);

int fetcher_new(sd_event *event, Fetcher **ret);
/* Cancels every fetch (no callbacks). Unlike fetch_cancel(), a .part is kept: a daemon that stops mid-download
 * resumes it when it comes back. Waits for the worker to do what it was handed (at most 32 MiB of writes, an
 * fsync, a commit into the cache). May be called from a done callback, not from a progress callback. */
Fetcher *fetcher_free(Fetcher *fr);
DEFINE_TRIVIAL_CLEANUP_FUNC(Fetcher *, fetcher_free);

/* A transfer slower than limit bytes/s for seconds is aborted (as interrupted: .part kept). Default: 1024
 * bytes/s for 60 s. Applies to transfers started afterwards. */
void fetcher_set_low_speed(Fetcher *fr, unsigned long limit, unsigned long seconds);

/* Starts a fetch. Copies what it needs from req. Returns 0 or -errno (err set). */
int fetch_start(Fetcher *fr, const FetchRequest *req, fetch_progress_t progress, fetch_done_t done,
                void *userdata, Fetch **ret, HydraError *err);

/* Stops a fetch: no callback follows, the .part file is removed (by the worker, right after what it is doing:
 * not necessarily when this returns), and nothing else the fetch queued is written. NULL is fine. */
void fetch_cancel(Fetch *f);

/* For a removal of cache entries on another thread (cache.h): fetcher_ticket() on the loop, after fetch_cancel();
 * on the remover's thread, fetcher_wait() returns once the fetcher's worker has done everything queued before the
 * ticket, the cancelled fetch's last write, commit or unlink included: nothing of it touches the cache afterwards.
 * The Fetcher must outlive the wait. */
uint64_t fetcher_ticket(Fetcher *fr);
void fetcher_wait(Fetcher *fr, uint64_t ticket);

/* The cache directory entry of a URL: CACHE_DIR/<key>, key the SHA-256 of the URL without user:password@ (its
 * query included: it may name another file; hashed, no token shows). Returns a new string or NULL. */
char *fetch_cache_entry(const char *cache_dir, const char *url);
