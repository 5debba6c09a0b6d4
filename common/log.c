/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
/* Our own CODE_FILE= and CODE_LINE= (the caller's), not sd_journal_send()'s (log_internal's). */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-journal.h>
#include <time.h>

#include "log.h"

static atomic_int max_level = LOG_INFO;
static atomic_bool use_journal = false;
static pthread_mutex_t stderr_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_table[] = {
        [LOG_ERR] = "error",
        [LOG_WARNING] = "warning",
        [LOG_NOTICE] = "notice",
        [LOG_INFO] = "info",
        [LOG_DEBUG] = "debug",
};

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

int log_level_from_string(const char *s) {
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(level_table); i++)
                if (level_table[i] && strcmp(level_table[i], s) == 0)
                        return (int) i;
        return -EINVAL;
}

/* $JOURNAL_STREAM is "DEV:INODE" of the stream systemd connected our stderr to; only trust it if it still is. */
void log_open(void) {
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;

        use_journal = false;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2)
                return;
        if (fstat(STDERR_FILENO, &st) < 0)
                return;
        use_journal = st.st_dev == (dev_t) dev && st.st_ino == (ino_t) ino;
}

/* Appends "NAME=value" (fmt's output, cut to size) to iov as a journal field. */
static void add_field(struct iovec *iov, size_t *n, char *buf, size_t size, const char *fmt, ...) _printf_(5, 6);
static void add_field(struct iovec *iov, size_t *n, char *buf, size_t size, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        (void) vsnprintf(buf, size, fmt, ap);
        va_end(ap);
        iov[(*n)++] = (struct iovec) { buf, strlen(buf) };
}

int log_internal(int level, int error, const char *vm, const char *state, const char *file, int line, const char *fmt,
                 ...) {
        char msg[sizeof("MESSAGE=") - 1 + 2048] = "MESSAGE=", *buf = msg + sizeof("MESSAGE=") - 1;
        va_list ap;

        if (error < 0)
                error = -error;
        if (level > max_level)
                return -error;

        errno = error; /* so that %m prints strerror(error) */
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof(msg) - (size_t) (buf - msg), fmt, ap);
        va_end(ap);

        if (use_journal) {
                /* One entry, field by field: VM= and HYDRA_STATE= only when there are such. */
                char priority[32], vm_field[64], state_field[64], code_file[512], code_line[32];
                struct iovec iov[6];
                size_t n = 0;

                iov[n++] = (struct iovec) { msg, strlen(msg) };
                add_field(iov, &n, priority, sizeof(priority), "PRIORITY=%i", level);
                if (vm)
                        add_field(iov, &n, vm_field, sizeof(vm_field), "VM=%s", vm);
                if (vm && state)
                        add_field(iov, &n, state_field, sizeof(state_field), "HYDRA_STATE=%s", state);
                add_field(iov, &n, code_file, sizeof(code_file), "CODE_FILE=%s", file);
                add_field(iov, &n, code_line, sizeof(code_line), "CODE_LINE=%d", line);
                (void) sd_journal_sendv(iov, (int) n);
        } else {
                struct timespec ts;
                struct tm tm;
                char stamp[32];

                (void) clock_gettime(CLOCK_REALTIME, &ts);
                (void) localtime_r(&ts.tv_sec, &tm);
                (void) strftime(stamp, sizeof(stamp), "%H:%M:%S", &tm);
                pthread_mutex_lock(&stderr_lock);
                fprintf(stderr, "%s.%03ld hydrad[%s]: %s\n", stamp, ts.tv_nsec / 1000000L,
                        (size_t) level < ELEMENTSOF(level_table) && level_table[level] ? level_table[level] : "log",
                        buf);
                pthread_mutex_unlock(&stderr_lock);
        }
        return -error;
}
