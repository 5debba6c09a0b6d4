/* SPDX-License-Identifier: MIT */
/* The downloader's disk side: one worker thread, a FIFO of jobs, an eventfd back to the loop. See fetch_sink.h.
 *
 * The hand-over is the one gRPC uses (DESIGN.md): a mutex-protected queue to the worker, an eventfd back to the
 * loop, where everything else happens. The worker touches only a sink's file, digests and cache entry; it never
 * logs (the loop does, from sink_error/sink_meta_error) and never calls back into fetch.c. */
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fetch_sink.h"
#include "macro.h"
#include "store.h"

#define FETCH_WRITE_BUFFERS 32             /* in flight to the worker; then the transfer pauses */
#define FETCH_HASH_CHUNK (4 * 1024 * 1024) /* read size when hashing an existing .part */

typedef enum JobType {
        JOB_PREPARE,
        JOB_CREATE,
        JOB_DATA,
        JOB_META,
        JOB_FINISH,
        JOB_COMMIT,
        JOB_DISCARD,
        JOB_UNLINK,
        JOB_BARRIER,
} JobType;

typedef struct Job {
        struct Job *next;
        JobType type;
        Sink *sink;
        FetchBuffer *buf; /* JOB_DATA */
        char *text;       /* JOB_META, JOB_COMMIT: meta.json */
        unsigned epoch;   /* JOB_DATA: the sink's epoch when queued */
        bool flag;        /* JOB_PREPARE: resume; JOB_FINISH: fsync */
        bool sha512;      /* JOB_PREPARE */
} Job;

struct Sink {
        SinkWorker *worker;
        unsigned n_ref;          /* under worker->lock: the owner's, plus one per queued or returned job */
        atomic_bool cancelled;   /* the owner let go with cancel: skip what is left */
        atomic_bool failed;      /* error set */
        atomic_uint epoch;       /* bumped by sink_unlink(): data queued before it is skipped */
        atomic_int meta_error;
        void *owner;             /* loop only; NULL once released */
        char *entry, *part_path, *data_path;

        /* The worker's while jobs are queued; the loop's in a done callback. */
        int fd;                  /* data.part, O_APPEND; -EBADF when not open */
        EVP_MD_CTX *sha256;
        EVP_MD_CTX *sha512;
        bool want_sha512;
        uint64_t size;           /* bytes written (or hashed) */
        int error;               /* the first failure, negative errno */
        const char *error_op;
};

struct SinkWorker {
        unsigned n_ref; /* the owner's, plus one while the eventfd handler runs (a callback may free us) */
        bool dead;      /* sink_worker_free() ran */
        sd_event *event;
        sink_done_t done;
        sink_wakeup_t wakeup;
        void *userdata;

        bool running;
        pthread_t thread;
        int efd; /* worker → loop: a job came back, or a buffer is free again */
        sd_event_source *efd_source;

        /* Shared with the thread: */
        pthread_mutex_t lock;
        pthread_cond_t cond;
        bool stop;
        Job *queue, **queue_tail;
        Job *returned, **returned_tail;
        FetchBuffer *free_buffers;
        unsigned n_buffers;
        unsigned n_queued_buffers; /* in data jobs not run yet: they come back */
        bool want_buffer; /* a transfer is paused until a buffer comes back */
        pthread_cond_t buffer_cond; /* a buffer came back (sink_worker_buffer_wait) */
        uint64_t n_submitted;       /* jobs queued so far: the tickets */
        uint64_t n_run;             /* of which run */
        pthread_cond_t run_cond;    /* n_run grew (sink_worker_wait) */
};

static bool job_reported(JobType t) {
        return t == JOB_PREPARE || t == JOB_FINISH || t == JOB_COMMIT || t == JOB_BARRIER;
}

/* --- the sink --- */

static int digests_init(Sink *s) {
        if (EVP_DigestInit_ex(s->sha256, EVP_sha256(), NULL) != 1)
                return -EIO;
        if (s->want_sha512 && EVP_DigestInit_ex(s->sha512, EVP_sha512(), NULL) != 1)
                return -EIO;
        return 0;
}

static int digests_update(Sink *s, const void *p, size_t n) {
        if (EVP_DigestUpdate(s->sha256, p, n) != 1)
                return -EIO;
        if (s->want_sha512 && EVP_DigestUpdate(s->sha512, p, n) != 1)
                return -EIO;
        return 0;
}

static Sink *sink_free(Sink *s) {
        if (!s)
                return NULL;
        s->fd = safe_close(s->fd);
        EVP_MD_CTX_free(s->sha256);
        EVP_MD_CTX_free(s->sha512);
        free(s->entry);
        free(s->part_path);
        free(s->data_path);
        return mfree(s);
}

Sink *sink_new(SinkWorker *w, const char *entry, void *owner) {
        Sink *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        s->worker = w;
        s->n_ref = 1;
        s->owner = owner;
        s->fd = -EBADF;
        s->entry = strdup(entry);
        s->sha256 = EVP_MD_CTX_new();
        s->sha512 = EVP_MD_CTX_new();
        if (!s->entry || !s->sha256 || !s->sha512 || asprintf(&s->part_path, "%s/data.part", entry) < 0 ||
            asprintf(&s->data_path, "%s/data", entry) < 0 || digests_init(s) < 0)
                return sink_free(s);
        return s;
}

/* Called with the worker's lock held, or once its thread is gone. */
static void sink_unref_locked(Sink *s) {
        if (s && --s->n_ref == 0)
                sink_free(s);
}

void sink_release(Sink *s, bool cancel) {
        SinkWorker *w;

        if (!s)
                return;
        w = s->worker;
        s->owner = NULL;
        if (cancel)
                atomic_store(&s->cancelled, true);
        pthread_mutex_lock(&w->lock);
        sink_unref_locked(s);
        pthread_mutex_unlock(&w->lock);
}

static void sink_fail(Sink *s, int r, const char *op) {
        if (s->error == 0) {
                s->error = r;
                s->error_op = op;
                atomic_store(&s->failed, true);
        }
}

bool sink_failed(Sink *s) {
        return s && atomic_load(&s->failed);
}

uint64_t sink_size(const Sink *s) {
        return s->size;
}

int sink_error(const Sink *s, const char **ret_op) {
        if (ret_op)
                *ret_op = s->error_op;
        return s->error;
}

int sink_meta_error(Sink *s) {
        return atomic_exchange(&s->meta_error, 0);
}

int sink_digests(Sink *s, char sha256[static FETCH_HEX_MAX], char sha512[static FETCH_HEX_MAX]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;

        sha512[0] = '\0';
        if (EVP_DigestFinal_ex(s->sha256, md, &md_len) != 1)
                return -EIO;
        fetch_hex_encode(md, md_len, sha256);
        if (s->want_sha512) {
                if (EVP_DigestFinal_ex(s->sha512, md, &md_len) != 1)
                        return -EIO;
                fetch_hex_encode(md, md_len, sha512);
        }
        return 0;
}

/* --- the jobs, on the worker --- */

static void job_prepare(Sink *s, bool resume, bool sha512) {
        _cleanup_free_ char *buf = NULL;
        struct stat st;

        s->fd = safe_close(s->fd);
        s->size = 0;
        s->want_sha512 = sha512;
        if (digests_init(s) < 0) {
                sink_fail(s, -EIO, "hash");
                return;
        }
        if (lstat(s->part_path, &st) < 0)
                return;
        if (!resume || !S_ISREG(st.st_mode) || st.st_size <= 0) {
                (void) unlink(s->part_path); /* not worth resuming: downloaded again */
                return;
        }

        s->fd = open(s->part_path, O_RDWR | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
        if (s->fd < 0) {
                sink_fail(s, -errno, "open");
                return;
        }
        /* the digest must cover what is there: read it back first */
        buf = malloc(FETCH_HASH_CHUNK);
        if (!buf) {
                sink_fail(s, -ENOMEM, "read");
                return;
        }
        while (s->size < (uint64_t) st.st_size && !atomic_load(&s->cancelled)) {
                uint64_t left = (uint64_t) st.st_size - s->size;
                ssize_t n = pread(s->fd, buf, left < FETCH_HASH_CHUNK ? (size_t) left : FETCH_HASH_CHUNK,
                                  (off_t) s->size);
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
}

static void job_create(Sink *s) {
        if (s->fd >= 0) {
                if (ftruncate(s->fd, 0) < 0) {
                        sink_fail(s, -errno, "truncate");
                        return;
                }
        } else {
                s->fd = open(s->part_path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0644);
                if (s->fd < 0) {
                        sink_fail(s, -errno, "create");
                        return;
                }
        }
        s->size = 0;
        if (digests_init(s) < 0)
                sink_fail(s, -EIO, "hash");
}

static void job_data(Sink *s, const FetchBuffer *b) {
        int r;

        if (s->fd < 0) {
                sink_fail(s, -EBADF, "write");
                return;
        }
        r = write_all(s->fd, b->data, b->len);
        if (r < 0) {
                sink_fail(s, r, "write");
                return;
        }
        if (digests_update(s, b->data, b->len) < 0) {
                sink_fail(s, -EIO, "hash");
                return;
        }
        s->size += b->len;
}

static void save_meta(Sink *s, const char *text) {
        int r = store_write_atomic(s->entry, "meta.json", text, strlen(text), 0600, NULL);

        if (r < 0)
                atomic_store(&s->meta_error, r);
}

/* The old meta.json goes first, durably: a crash before the new one is written leaves data without meta.json
 * (downloaded again), never data described by the metadata of another version. */
static void job_commit(Sink *s, const char *meta_text) {
        int r;

        r = store_remove(s->entry, "meta.json");
        if (r >= 0)
                r = fsync_dir(s->entry);
        if (r < 0) {
                sink_fail(s, r, "remove");
                return;
        }
        if (rename(s->part_path, s->data_path) < 0) {
                sink_fail(s, -errno, "rename");
                return;
        }
        s->fd = safe_close(s->fd);
        save_meta(s, meta_text); /* on failure, data is simply not a cache hit next time */
}

static void job_run(Job *j) {
        Sink *s = j->sink;
        bool skip = atomic_load(&s->cancelled);

        switch (j->type) {
        case JOB_PREPARE:
                if (!skip)
                        job_prepare(s, j->flag, j->sha512);
                return;
        case JOB_CREATE:
                if (!skip && s->error == 0)
                        job_create(s);
                return;
        case JOB_DATA:
                if (!skip && s->error == 0 && j->epoch == atomic_load(&s->epoch))
                        job_data(s, j->buf);
                return;
        case JOB_META:
                if (!skip)
                        save_meta(s, j->text);
                return;
        case JOB_FINISH:
                if (!skip && s->error == 0 && j->flag && s->fd >= 0 && fsync(s->fd) < 0)
                        sink_fail(s, -errno, "sync");
                return;
        case JOB_COMMIT:
                if (!skip && s->error == 0)
                        job_commit(s, j->text);
                return;
        case JOB_DISCARD:
                (void) unlink(s->data_path);
                (void) store_remove(s->entry, "meta.json");
                return;
        case JOB_UNLINK:
                /* closed first: the blocks of a large file are freed by the last close, here, not on the loop */
                s->fd = safe_close(s->fd);
                (void) unlink(s->part_path);
                s->size = 0;
                s->error = 0;
                s->error_op = NULL;
                atomic_store(&s->failed, false);
                return;
        case JOB_BARRIER:
                return;
        }
}

static void eventfd_signal(int fd) {
        uint64_t one = 1;

        (void) !write(fd, &one, sizeof(one)); /* a full counter wakes the reader all the same */
}

static void job_free(Job *j) {
        free(j->text);
        free(j);
}

static void *worker_main(void *userdata) {
        SinkWorker *w = userdata;

        pthread_mutex_lock(&w->lock);
        for (;;) {
                bool notify = false;
                Job *j = w->queue;

                if (!j) {
                        if (w->stop)
                                break;
                        pthread_cond_wait(&w->cond, &w->lock);
                        continue;
                }
                w->queue = j->next;
                if (!w->queue)
                        w->queue_tail = &w->queue;
                pthread_mutex_unlock(&w->lock);

                job_run(j);

                pthread_mutex_lock(&w->lock);
                w->n_run++;
                pthread_cond_broadcast(&w->run_cond);
                if (j->buf) {
                        j->buf->next = w->free_buffers;
                        w->free_buffers = j->buf;
                        j->buf = NULL;
                        w->n_queued_buffers--;
                        notify = w->want_buffer;
                        pthread_cond_signal(&w->buffer_cond);
                }
                if (job_reported(j->type)) {
                        j->next = NULL;
                        *w->returned_tail = j;
                        w->returned_tail = &j->next;
                        notify = true;
                } else {
                        sink_unref_locked(j->sink);
                        job_free(j);
                }
                if (notify)
                        eventfd_signal(w->efd);
        }
        pthread_mutex_unlock(&w->lock);
        return NULL;
}

/* --- the worker, on the loop --- */

static SinkWorker *worker_unref(SinkWorker *w) {
        if (!w || --w->n_ref > 0)
                return NULL;
        (void) pthread_cond_destroy(&w->cond);
        (void) pthread_cond_destroy(&w->buffer_cond);
        (void) pthread_cond_destroy(&w->run_cond);
        (void) pthread_mutex_destroy(&w->lock);
        return mfree(w);
}
DEFINE_TRIVIAL_CLEANUP_FUNC(SinkWorker *, worker_unref);

/* Jobs came back, or a buffer a paused transfer waits for is free. */
static int on_efd(sd_event_source *source, int fd, uint32_t revents, void *userdata) {
        SinkWorker *w = userdata;
        _cleanup_(worker_unrefp) SinkWorker *pin = (w->n_ref++, w);
        Job *returned;
        uint64_t v;
        bool buffers_free;

        (void) !read(w->efd, &v, sizeof(v)); /* only clears the wakeup */

        pthread_mutex_lock(&w->lock);
        returned = TAKE_PTR(w->returned);
        w->returned_tail = &w->returned;
        buffers_free = w->free_buffers;
        if (buffers_free)
                w->want_buffer = false;
        pthread_mutex_unlock(&w->lock);

        while (returned) {
                Job *j = returned;
                returned = j->next;
                /* a done callback may have freed the worker: then only clean up */
                if (!w->dead && j->sink->owner)
                        w->done(j->sink, (SinkOp) (j->type == JOB_PREPARE  ? SINK_PREPARE
                                                   : j->type == JOB_FINISH ? SINK_FINISH
                                                   : j->type == JOB_COMMIT ? SINK_COMMIT
                                                                           : SINK_BARRIER),
                                j->sink->owner);
                pthread_mutex_lock(&w->lock);
                sink_unref_locked(j->sink);
                pthread_mutex_unlock(&w->lock);
                job_free(j);
        }
        if (!w->dead && w->wakeup)
                w->wakeup(buffers_free, w->userdata);
        return 0;
}

int sink_worker_new(sd_event *event, sink_done_t done, sink_wakeup_t wakeup, void *userdata, SinkWorker **ret) {
        SinkWorker *w = calloc(1, sizeof(*w));

        if (!w)
                return -ENOMEM;
        w->n_ref = 1;
        w->event = event; /* borrowed: the owner holds a reference */
        w->done = done;
        w->wakeup = wakeup;
        w->userdata = userdata;
        w->efd = -EBADF;
        w->queue_tail = &w->queue;
        w->returned_tail = &w->returned;
        (void) pthread_mutex_init(&w->lock, NULL);
        (void) pthread_cond_init(&w->cond, NULL);
        (void) pthread_cond_init(&w->buffer_cond, NULL);
        (void) pthread_cond_init(&w->run_cond, NULL);
        *ret = w;
        return 0;
}

/* The thread starts with the first job. */
static int worker_start(SinkWorker *w) {
        sigset_t all, saved;
        int r;

        if (w->running)
                return 0;
        if (w->dead)
                return -ESHUTDOWN;
        if (w->efd < 0) {
                w->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
                if (w->efd < 0)
                        return -errno;
        }
        if (!w->efd_source) {
                r = sd_event_add_io(w->event, &w->efd_source, w->efd, EPOLLIN, on_efd, w);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_description(w->efd_source, "fetch-worker");
        }

        /* the worker takes no signal: they are the loop's (signalfd) */
        (void) sigfillset(&all);
        (void) pthread_sigmask(SIG_SETMASK, &all, &saved);
        r = -pthread_create(&w->thread, NULL, worker_main, w);
        (void) pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0)
                return r;
        w->running = true;
        return 0;
}

SinkWorker *sink_worker_free(SinkWorker *w) {
        if (!w || w->dead)
                return NULL;
        w->dead = true;
        if (w->running) {
                /* queued jobs still run (a .part kept for resuming gets all that arrived); then the thread ends */
                pthread_mutex_lock(&w->lock);
                w->stop = true;
                pthread_cond_signal(&w->cond);
                pthread_mutex_unlock(&w->lock);
                (void) pthread_join(w->thread, NULL);
                w->running = false;
        }
        while (w->returned) {
                Job *j = w->returned;
                w->returned = j->next;
                sink_unref_locked(j->sink);
                job_free(j);
        }
        w->returned_tail = &w->returned;
        sink_worker_buffers_trim(w);
        w->efd_source = sd_event_source_disable_unref(w->efd_source);
        w->efd = safe_close(w->efd);
        worker_unref(w);
        return NULL;
}

static int submit(Sink *s, JobType type, FetchBuffer *buf, const char *text, bool flag, bool sha512) {
        SinkWorker *w = s->worker;
        Job *j;
        int r;

        r = worker_start(w);
        if (r < 0)
                return r;
        j = calloc(1, sizeof(*j));
        if (!j)
                return -ENOMEM;
        *j = (Job) { .type = type, .sink = s, .buf = buf, .flag = flag, .sha512 = sha512,
                     .epoch = atomic_load(&s->epoch) };
        if (text) {
                j->text = strdup(text);
                if (!j->text) {
                        free(j);
                        return -ENOMEM;
                }
        }

        pthread_mutex_lock(&w->lock);
        s->n_ref++;
        w->n_submitted++;
        if (buf)
                w->n_queued_buffers++;
        *w->queue_tail = j;
        w->queue_tail = &j->next;
        pthread_cond_signal(&w->cond);
        pthread_mutex_unlock(&w->lock);
        return 0;
}

uint64_t sink_worker_ticket(SinkWorker *w) {
        uint64_t t;

        pthread_mutex_lock(&w->lock);
        t = w->n_submitted;
        pthread_mutex_unlock(&w->lock);
        return t;
}

void sink_worker_wait(SinkWorker *w, uint64_t ticket) {
        pthread_mutex_lock(&w->lock);
        /* Every queued job runs, even after sink_worker_free() asked the thread to stop. */
        while (w->n_run < ticket)
                pthread_cond_wait(&w->run_cond, &w->lock);
        pthread_mutex_unlock(&w->lock);
}

int sink_prepare(Sink *s, bool resume, bool sha512) {
        return submit(s, JOB_PREPARE, NULL, NULL, resume, sha512);
}

int sink_create(Sink *s) {
        return submit(s, JOB_CREATE, NULL, NULL, false, false);
}

int sink_write(Sink *s, FetchBuffer *b) {
        return submit(s, JOB_DATA, b, NULL, false, false);
}

int sink_save_meta(Sink *s, const char *text) {
        return submit(s, JOB_META, NULL, text, false, false);
}

int sink_finish(Sink *s, bool fsync) {
        return submit(s, JOB_FINISH, NULL, NULL, fsync, false);
}

int sink_commit(Sink *s, const char *meta_text) {
        return submit(s, JOB_COMMIT, NULL, meta_text, false, false);
}

int sink_discard(Sink *s) {
        return submit(s, JOB_DISCARD, NULL, NULL, false, false);
}

int sink_unlink(Sink *s) {
        atomic_fetch_add(&s->epoch, 1);
        return submit(s, JOB_UNLINK, NULL, NULL, false, false);
}

int sink_barrier(Sink *s) {
        return submit(s, JOB_BARRIER, NULL, NULL, false, false);
}

/* --- buffers --- */

static FetchBuffer *buffer_take(SinkWorker *w, bool wait) {
        FetchBuffer *b = NULL;

        pthread_mutex_lock(&w->lock);
        while (wait && !w->free_buffers && w->n_buffers >= FETCH_WRITE_BUFFERS && w->n_queued_buffers > 0)
                pthread_cond_wait(&w->buffer_cond, &w->lock);
        if (w->free_buffers) {
                b = w->free_buffers;
                w->free_buffers = b->next;
        } else if (w->n_buffers < FETCH_WRITE_BUFFERS || wait) {
                /* mapped, not malloc'ed: handed back to the kernel when idle (sink_worker_buffers_trim) */
                b = mmap(NULL, sizeof(FetchBuffer), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
                if (b == MAP_FAILED)
                        b = NULL;
                else
                        w->n_buffers++;
        } else
                w->want_buffer = true;
        pthread_mutex_unlock(&w->lock);
        if (b) {
                b->next = NULL;
                b->len = 0;
        }
        return b;
}

FetchBuffer *sink_worker_buffer_get(SinkWorker *w) {
        return buffer_take(w, false);
}

FetchBuffer *sink_worker_buffer_wait(SinkWorker *w) {
        return buffer_take(w, true);
}

void sink_worker_buffer_put(SinkWorker *w, FetchBuffer *b) {
        if (!b)
                return;
        pthread_mutex_lock(&w->lock);
        b->next = w->free_buffers;
        w->free_buffers = b;
        pthread_mutex_unlock(&w->lock);
}

void sink_worker_buffers_trim(SinkWorker *w) {
        FetchBuffer *l;

        pthread_mutex_lock(&w->lock);
        l = TAKE_PTR(w->free_buffers);
        for (FetchBuffer *b = l; b; b = b->next)
                w->n_buffers--;
        pthread_mutex_unlock(&w->lock);
        while (l) {
                FetchBuffer *b = l;
                l = b->next;
                (void) munmap(b, sizeof(FetchBuffer));
        }
}
