/* SPDX-License-Identifier: MIT */
/* bench_fetch URL CACHE_DIR: one download through daemon/fetch.c (libcurl multi on sd-event, sha256 on the way,
 * .part + fsync + rename), as hydrad does it. Prints {"bytes": N, "seconds": S} as JSON. A figure, never a test. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>

#include "fetch.h"
#include "log.h"

typedef struct State {
        sd_event *event;
        int r;
        uint64_t bytes;
} State;

static void on_progress(Fetch *f, const FetchProgress *p, void *userdata) {
        State *s = userdata;

        s->bytes = p->bytes;
}

static void on_done(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata) {
        State *s = userdata;

        s->r = r;
        if (r < 0)
                fprintf(stderr, "bench_fetch: %s\n", err->message);
        (void) sd_event_exit(s->event, 0);
}

int main(int argc, char **argv) {
        State s = {};
        Fetcher *fr = NULL;
        Fetch *f = NULL;
        HydraError err;
        struct timespec t0, t1;
        struct stat st;
        char *path;
        int r;

        if (argc != 3) {
                fprintf(stderr, "usage: bench_fetch URL CACHE_DIR\n");
                return 2;
        }
        log_open();
        hydra_error_clear(&err);
        if (sd_event_default(&s.event) < 0 || fetcher_new(s.event, &fr) < 0)
                return 1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        r = fetch_start(fr, &(FetchRequest) { .url = argv[1], .cache_dir = argv[2] }, on_progress, on_done, &s, &f,
                        &err);
        if (r < 0) {
                fprintf(stderr, "bench_fetch: %s\n", err.message);
                return 1;
        }
        (void) sd_event_loop(s.event);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (s.r < 0)
                return 1;
        path = fetch_cache_entry(argv[2], argv[1]);
        if (!path || asprintf(&path, "%s/data", path) < 0 || stat(path, &st) < 0)
                return 1;
        printf("{\"bytes\": %lld, \"seconds\": %.6f}\n", (long long) st.st_size,
               (double) (t1.tv_sec - t0.tv_sec) + (double) (t1.tv_nsec - t0.tv_nsec) / 1e9);
        fetcher_free(fr);
        sd_event_unref(s.event);
        return 0;
}
