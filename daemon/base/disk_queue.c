/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

#include "disk_queue.h"
#include "macro.h"
#include "store.h"

/* Two lists under one mutex: jobs to run (the thread takes from the head) and jobs run (the loop takes them all
 * when the eventfd says so). A job belongs to the thread between the two. outstanding is the loop's count of jobs
 * queued and not yet delivered; only the loop touches it. */

typedef struct DiskJob {
        disk_job_run_t run;
        void *arg;
        void (*free_arg)(void *arg);
        disk_job_done_t done;
        void *userdata;
        int result;
        HydraError err;
        struct DiskJob *next;
} DiskJob;

typedef struct JobList {
        DiskJob *head, *tail;
} JobList;

struct DiskQueue {
        sd_event *event;
        sd_event_source *io;
        int efd;
        char *description;
        disk_queue_idle_t idle;
        void *userdata;

        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t cond;
        JobList todo;      /* under lock */
        JobList done;      /* under lock */
        bool stop;         /* under lock: run what is left, then exit */

        unsigned outstanding;
};

static void list_push(JobList *l, DiskJob *j) {
        j->next = NULL;
        if (l->tail)
                l->tail->next = j;
        else
                l->head = j;
        l->tail = j;
}

static DiskJob *list_pop(JobList *l) {
        DiskJob *j = l->head;

        if (j) {
                l->head = j->next;
                if (!l->head)
                        l->tail = NULL;
                j->next = NULL;
        }
        return j;
}

static void job_free(DiskJob *j) {
        if (j->free_arg)
                j->free_arg(j->arg);
        free(j);
}

static void *disk_queue_thread(void *userdata) {
        DiskQueue *q = userdata;
        char name[16];

        (void) snprintf(name, sizeof(name), "%s", q->description);
        (void) pthread_setname_np(pthread_self(), name);

        pthread_mutex_lock(&q->lock);
        for (;;) {
                DiskJob *j = list_pop(&q->todo);

                if (!j) {
                        if (q->stop)
                                break;
                        pthread_cond_wait(&q->cond, &q->lock);
                        continue;
                }
                pthread_mutex_unlock(&q->lock);
                hydra_error_clear(&j->err);
                j->result = j->run(j->arg, &j->err);
                pthread_mutex_lock(&q->lock);
                list_push(&q->done, j);
                (void) eventfd_write(q->efd, 1);
        }
        pthread_mutex_unlock(&q->lock);
        return NULL;
}

static int on_disk_queue_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        DiskQueue *q = userdata;
        JobList done;
        eventfd_t v;

        (void) eventfd_read(q->efd, &v);
        pthread_mutex_lock(&q->lock);
        done = q->done;
        q->done = (JobList) {};
        pthread_mutex_unlock(&q->lock);

        for (DiskJob *j; (j = list_pop(&done));) {
                q->outstanding--;
                if (j->done)
                        j->done(j->result, &j->err, j->userdata);
                job_free(j);
        }
        if (q->outstanding == 0 && q->idle)
                q->idle(q, q->userdata);
        return 0;
}

int disk_queue_new(sd_event *event, const char *description, disk_queue_idle_t idle, void *userdata,
                   DiskQueue **ret) {
        DiskQueue *q;
        sigset_t all, saved;
        int r;

        q = calloc(1, sizeof(*q));
        if (!q)
                return -ENOMEM;
        *q = (DiskQueue) { .event = sd_event_ref(event), .efd = -EBADF, .idle = idle, .userdata = userdata };
        (void) pthread_mutex_init(&q->lock, NULL);
        (void) pthread_cond_init(&q->cond, NULL);
        q->description = strdup(isempty(description) ? "disk" : description);
        if (!q->description) {
                disk_queue_free(q);
                return -ENOMEM;
        }
        q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (q->efd < 0) {
                r = -errno;
                disk_queue_free(q);
                return r;
        }
        r = sd_event_add_io(event, &q->io, q->efd, EPOLLIN, on_disk_queue_io, q);
        if (r < 0) {
                disk_queue_free(q);
                return r;
        }
        (void) sd_event_source_set_description(q->io, q->description);

        /* Signals stay with the loop thread. */
        sigfillset(&all);
        r = pthread_sigmask(SIG_SETMASK, &all, &saved);
        if (r == 0) {
                r = pthread_create(&q->thread, NULL, disk_queue_thread, q);
                (void) pthread_sigmask(SIG_SETMASK, &saved, NULL);
        }
        if (r != 0) {
                disk_queue_free(q);
                return -r;
        }
        q->thread_started = true;
        *ret = q;
        return 0;
}

DiskQueue *disk_queue_free(DiskQueue *q) {
        if (!q)
                return NULL;
        if (q->thread_started) {
                pthread_mutex_lock(&q->lock);
                q->stop = true;
                pthread_cond_signal(&q->cond);
                pthread_mutex_unlock(&q->lock);
                (void) pthread_join(q->thread, NULL);
        }
        /* Everything ran; nobody is told any more. */
        for (DiskJob *j; (j = list_pop(&q->done));)
                job_free(j);
        for (DiskJob *j; (j = list_pop(&q->todo));)
                job_free(j);
        sd_event_source_disable_unref(q->io);
        safe_close(q->efd);
        sd_event_unref(q->event);
        pthread_cond_destroy(&q->cond);
        pthread_mutex_destroy(&q->lock);
        free(q->description);
        free(q);
        return NULL;
}

int disk_queue_call(DiskQueue *q, disk_job_run_t run, void *arg, void (*free_arg)(void *arg), disk_job_done_t done,
                    void *userdata) {
        DiskJob *j;

        j = calloc(1, sizeof(*j));
        if (!j) {
                if (free_arg)
                        free_arg(arg);
                return -ENOMEM;
        }
        *j = (DiskJob) { .run = run, .arg = arg, .free_arg = free_arg, .done = done, .userdata = userdata };
        q->outstanding++;
        pthread_mutex_lock(&q->lock);
        list_push(&q->todo, j);
        pthread_cond_signal(&q->cond);
        pthread_mutex_unlock(&q->lock);
        return 0;
}

bool disk_queue_idle(const DiskQueue *q) {
        return q->outstanding == 0;
}

/* --- the usual jobs --- */

typedef struct FileJob {
        char *dir;
        char *name;           /* NULL: dir is a tree to remove */
        void *data;
        size_t size;
        mode_t mode;
        bool remove;
} FileJob;

static void file_job_free(void *arg) {
        FileJob *f = arg;

        free(f->dir);
        free(f->name);
        free(f->data);
        free(f);
}

static int file_job_run(void *arg, HydraError *err) {
        FileJob *f = arg;
        int r;

        if (!f->name) {
                r = rm_rf(f->dir);
                return r < 0 ? hydra_error_set(err, r, "remove '%s': %s", f->dir, strerror(-r)) : 0;
        }
        if (f->remove) {
                r = store_remove(f->dir, f->name);
                return r < 0 ? hydra_error_set(err, r, "remove '%s/%s': %s", f->dir, f->name, strerror(-r)) : 0;
        }
        return store_write_atomic(f->dir, f->name, f->data, f->size, f->mode, err);
}

static int file_job_queue(DiskQueue *q, const char *dir, const char *name, const void *data, size_t size,
                          mode_t mode, bool remove, disk_job_done_t done, void *userdata) {
        FileJob *f;

        f = calloc(1, sizeof(*f));
        if (!f)
                return -ENOMEM;
        *f = (FileJob) { .dir = strdup(dir), .name = name ? strdup(name) : NULL, .size = size, .mode = mode,
                         .remove = remove };
        if (data && (f->data = malloc(size > 0 ? size : 1)))
                memcpy(f->data, data, size);
        if (!f->dir || (name && !f->name) || (data && !f->data)) {
                file_job_free(f);
                return -ENOMEM;
        }
        return disk_queue_call(q, file_job_run, f, file_job_free, done, userdata);
}

int disk_queue_replace(DiskQueue *q, const char *dir, const char *name, const void *data, size_t size, mode_t mode,
                       disk_job_done_t done, void *userdata) {
        return file_job_queue(q, dir, name, data, size, mode, false, done, userdata);
}

int disk_queue_remove(DiskQueue *q, const char *dir, const char *name, disk_job_done_t done, void *userdata) {
        return file_job_queue(q, dir, name, NULL, 0, 0, true, done, userdata);
}

int disk_queue_rm_rf(DiskQueue *q, const char *path, disk_job_done_t done, void *userdata) {
        return file_job_queue(q, path, NULL, NULL, 0, 0, false, done, userdata);
}
