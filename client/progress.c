/* SPDX-License-Identifier: MIT */
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "output.h"
#include "progress.h"

#define REDRAW_MIN_USEC 100000 /* a bar redraws at most ~10 times a second */
#define BAR_MIN_WIDTH 10

struct ProgressDisplay {
        FILE *f;           /* borrowed */
        ProgressMode mode;
        char *role;
        /* The last progress seen (strings owned). */
        char *step, *what;
        uint64_t bytes, total, rate;
        bool have;
        bool shown;        /* the bar is on screen */
        bool dirty;        /* an update is not drawn yet */
        uint64_t drawn_usec;
        int decile;        /* lines: the last 10% mark printed, -1 none */
};

static uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

ProgressMode progress_mode_for(FILE *f, bool json) {
        if (json)
                return PROGRESS_NONE;
        return isatty(fileno(f)) ? PROGRESS_BAR : PROGRESS_LINES;
}

ProgressDisplay *progress_display_new(FILE *f, ProgressMode mode, const char *role) {
        ProgressDisplay *d = calloc(1, sizeof(*d));

        if (!d)
                return NULL;
        d->role = strdup(role);
        if (!d->role) {
                free(d);
                return NULL;
        }
        d->f = f;
        d->mode = mode;
        d->decile = -1;
        return d;
}

static void bar_erase(ProgressDisplay *d) {
        if (d->shown) {
                fputs("\r\033[K", d->f);
                fflush(d->f);
                d->shown = false;
        }
}

ProgressDisplay *progress_display_free(ProgressDisplay *d) {
        if (!d)
                return NULL;
        bar_erase(d);
        free(d->role);
        free(d->step);
        free(d->what);
        free(d);
        return NULL;
}

static int terminal_columns(FILE *f) {
        struct winsize ws = {};

        if (ioctl(fileno(f), TIOCGWINSZ, &ws) < 0 || ws.ws_col < 20)
                return 80;
        return ws.ws_col;
}

static Hydra__V1__Progress current(const ProgressDisplay *d) {
        Hydra__V1__Progress p = HYDRA__V1__PROGRESS__INIT;

        p.step = d->step ?: (char *) "";
        p.what = d->what ?: (char *) "";
        p.bytes = d->bytes;
        p.total = d->total;
        p.rate = d->rate;
        return p;
}

/* "download debian-13.qcow2 [=======>      ]  45%  150.0 MiB/330.0 MiB  12.3 MiB/s", fitted to the terminal. */
static void bar_draw(ProgressDisplay *d) {
        int cols = terminal_columns(d->f) - 1, left_len, right_len, bar;
        char right[128] = "", done[32], total[32], rate[32], left[512];
        const char *what = progress_what_short(d->what);

        format_bytes(done, sizeof(done), d->bytes);
        if (d->total > 0) {
                format_bytes(total, sizeof(total), d->total);
                snprintf(right, sizeof(right), " %3u%%  %s/%s", (unsigned) (d->bytes >= d->total ? 100 :
                         d->bytes * 100 / d->total), done, total);
        } else if (d->bytes > 0)
                snprintf(right, sizeof(right), "  %s", done);
        if (d->rate > 0) {
                format_bytes(rate, sizeof(rate), d->rate);
                snprintf(right + strlen(right), sizeof(right) - strlen(right), "  %s/s", rate);
        }
        right_len = (int) strlen(right);

        left_len = snprintf(left, sizeof(left), "%s: %s%s%s", d->role, isempty(d->step) ? "preparing" : d->step,
                            isempty(what) ? "" : " ", what);
        if (left_len > (int) sizeof(left) - 1)
                left_len = (int) sizeof(left) - 1;
        /* Room for "[" + bar + "]" if the total is known; else the text alone. Shorten the name, not the numbers. */
        bar = d->total > 0 ? cols - left_len - right_len - 3 : 0;
        if (d->total > 0 && bar < BAR_MIN_WIDTH) {
                int cut = left_len - (cols - right_len - 3 - BAR_MIN_WIDTH);
                if (cut > 0 && left_len - cut > 8) {
                        left_len -= cut;
                        memcpy(left + left_len - 3, "...", 3);
                        left[left_len] = '\0';
                }
                bar = cols - left_len - right_len - 3;
        }
        if (left_len + right_len > cols && cols - right_len > 8) {
                left_len = cols - right_len;
                memcpy(left + left_len - 3, "...", 3);
                left[left_len] = '\0';
        }

        fprintf(d->f, "\r%s", left);
        if (d->total > 0 && bar >= BAR_MIN_WIDTH) {
                int fill = (int) ((d->bytes >= d->total ? d->total : d->bytes) * (uint64_t) bar / d->total);

                fputs(" [", d->f);
                for (int i = 0; i < bar; i++)
                        fputc(i < fill ? '=' : i == fill ? '>' : ' ', d->f);
                fputc(']', d->f);
        }
        fprintf(d->f, "%s\033[K", right);
        fflush(d->f);
        d->shown = true;
        d->dirty = false;
        d->drawn_usec = now_usec();
}

static void line_print(ProgressDisplay *d) {
        Hydra__V1__Progress p = current(d);
        char text[2048];

        format_progress(text, sizeof(text), &p);
        fprintf(d->f, "hydractl: %s: %s\n", d->role, text);
        fflush(d->f);
}

static bool streq_null(const char *a, const char *b) {
        return streq(strempty(a), strempty(b));
}

void progress_display_update(ProgressDisplay *d, const Hydra__V1__Progress *p) {
        bool changed;
        int decile;

        if (!d || d->mode == PROGRESS_NONE || !p)
                return;

        changed = !d->have || !streq_null(d->step, p->step) || !streq_null(d->what, p->what);
        if (changed) {
                char *step = strdup(strempty(p->step)), *what = strdup(strempty(p->what));

                if (!step || !what) {
                        free(step);
                        free(what);
                        return; /* a progress display is not worth failing for */
                }
                free(d->step);
                free(d->what);
                d->step = step;
                d->what = what;
                d->decile = -1;
        }
        d->have = true;
        d->bytes = p->bytes;
        d->total = p->total;
        d->rate = p->rate;

        if (d->mode == PROGRESS_BAR) {
                if (changed || now_usec() - d->drawn_usec >= REDRAW_MIN_USEC)
                        bar_draw(d);
                else
                        d->dirty = true;
                return;
        }

        /* Lines: the step, then each 10% mark it passes. */
        decile = d->total > 0 ? (int) ((d->bytes >= d->total ? d->total : d->bytes) * 10 / d->total) : 0;
        if (changed || (d->total > 0 && decile > d->decile)) {
                line_print(d);
                d->decile = decile;
        }
}

void progress_display_notice(ProgressDisplay *d, const char *message) {
        if (!d || d->mode == PROGRESS_NONE)
                return;
        bar_erase(d);
        fprintf(d->f, "hydractl: %s: notice: ", d->role);
        for (const char *c = strempty(message); *c; c++)
                fputc(*c == '\n' || *c == '\r' ? ' ' : *c, d->f);
        fputc('\n', d->f);
        fflush(d->f);
        if (d->mode == PROGRESS_BAR && d->have)
                d->dirty = true;
}

void progress_display_tick(ProgressDisplay *d) {
        if (d && d->mode == PROGRESS_BAR && d->dirty && now_usec() - d->drawn_usec >= REDRAW_MIN_USEC)
                bar_draw(d);
}
