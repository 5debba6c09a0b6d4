/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "listener.h"
#include "log.h"

struct Listener {
        sd_event *event;
        char *name;
        char *description;
        int fd;
        sd_event_source *io;
        sd_event_source *retry;   /* armed while paused */
        bool paused;
        unsigned max_connections;
        uint64_t retry_usec;
        int (*on_connection)(int fd, void *userdata);
        unsigned (*count)(void *userdata);
        void (*refuse)(int fd, void *userdata);
        void *userdata;

        /* The rate limit: what happened since the last warning, and when that was (0: never). */
        uint64_t warned_usec;
        unsigned unsaid_refused, unsaid_paused, unsaid_failed;

        ListenerStats stats;
};

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* Returns true if a warning may be logged now; then the caller logs and the counters start over. */
static bool warn_allowed(Listener *l) {
        uint64_t now = now_usec();

        if (l->warned_usec != 0 && now - l->warned_usec < LISTENER_WARN_INTERVAL_USEC)
                return false;
        l->warned_usec = now;
        l->stats.warnings++;
        return true;
}

/* "" or " (and 3 refused, 2 pauses since the last message)": what the rate limit kept quiet. */
static void unsaid_format(Listener *l, char *buf, size_t size) {
        if (l->unsaid_refused + l->unsaid_paused + l->unsaid_failed == 0) {
                buf[0] = 0;
                return;
        }
        (void) snprintf(buf, size, " (since the last message: %u refused at the cap, %u pauses, %u failed)",
                        l->unsaid_refused, l->unsaid_paused, l->unsaid_failed);
        l->unsaid_refused = l->unsaid_paused = l->unsaid_failed = 0;
}

static bool is_resource_error(int error) {
        error = abs(error);
        return error == EMFILE || error == ENFILE || error == ENOBUFS || error == ENOMEM;
}

static void listener_resume(Listener *l) {
        if (!l->paused)
                return;
        l->paused = false;
        (void) sd_event_source_set_enabled(l->retry, SD_EVENT_OFF);
        (void) sd_event_source_set_enabled(l->io, SD_EVENT_ON);
}

static int on_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        listener_resume(userdata);
        return 0;
}

static void listener_pause(Listener *l, int error) {
        char unsaid[128];
        int r;

        l->stats.paused++;
        if (warn_allowed(l)) {
                unsaid_format(l, unsaid, sizeof(unsaid));
                log_warning_errno(error, "%s: cannot accept connections: %m; pausing for %llu ms or until a connection closes%s",
                                  l->name, (unsigned long long) (l->retry_usec / 1000ULL), unsaid);
        } else
                l->unsaid_paused++;

        r = sd_event_source_set_time_relative(l->retry, l->retry_usec);
        if (r >= 0)
                r = sd_event_source_set_enabled(l->retry, SD_EVENT_ONESHOT);
        if (r < 0)
                return; /* without a timer, pausing would be for good: keep accepting (and spinning) instead */
        (void) sd_event_source_set_enabled(l->io, SD_EVENT_OFF);
        l->paused = true;
}

static void listener_refuse(Listener *l, int fd, unsigned open) {
        char unsaid[128];

        l->stats.refused++;
        if (l->refuse)
                l->refuse(fd, l->userdata);
        safe_close(fd);
        if (warn_allowed(l)) {
                unsaid_format(l, unsaid, sizeof(unsaid));
                log_warning("%s: %u connections open, the most allowed; closed a new one%s", l->name, open, unsaid);
        } else
                l->unsaid_refused++;
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Listener *l = userdata;

        for (unsigned i = 0; i < LISTENER_ACCEPTS_PER_WAKEUP; i++) {
                int cfd, r;

                cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno == EAGAIN)
                                return 0;
                        /* EMFILE and the like, or something unexpected: either way the connection (if any) stays
                         * in the backlog and epoll reports it again at once. */
                        listener_pause(l, -errno);
                        return 0;
                }

                if (l->max_connections > 0 && l->count) {
                        unsigned open = l->count(l->userdata);
                        if (open >= l->max_connections) {
                                listener_refuse(l, cfd, open);
                                continue;
                        }
                }

                l->stats.accepted++;
                r = l->on_connection(cfd, l->userdata);
                if (r < 0) {
                        if (is_resource_error(r)) {
                                listener_pause(l, r);
                                return 0;
                        }
                        if (warn_allowed(l)) {
                                char unsaid[128];
                                unsaid_format(l, unsaid, sizeof(unsaid));
                                log_warning_errno(r, "%s: cannot serve a connection, closed it: %m%s", l->name,
                                                  unsaid);
                        } else
                                l->unsaid_failed++;
                }
        }
        return 0;
}

int listener_new(sd_event *e, int listen_fd, const ListenerConfig *cfg, Listener **ret) {
        _cleanup_close_ int fd = listen_fd;
        _cleanup_(listener_freep) Listener *l = NULL;
        int r;

        if (!e || fd < 0 || !cfg || !cfg->on_connection || (cfg->max_connections > 0 && !cfg->count) || !ret)
                return -EINVAL;

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->event = sd_event_ref(e);
        l->fd = -EBADF;
        l->max_connections = cfg->max_connections;
        l->retry_usec = cfg->retry_usec ?: LISTENER_RETRY_USEC_DEFAULT;
        l->on_connection = cfg->on_connection;
        l->count = cfg->count;
        l->refuse = cfg->refuse;
        l->userdata = cfg->userdata;
        l->name = strdup(cfg->name ?: "listener");
        l->description = strdup(cfg->description ?: "listener");
        if (!l->name || !l->description)
                return -ENOMEM;

        r = sd_event_add_io(e, &l->io, fd, EPOLLIN, on_accept, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_description(l->io, l->description);
        l->fd = TAKE_FD(fd);

        /* Made now, so that pausing needs no allocation when memory is what ran out. */
        r = sd_event_add_time_relative(e, &l->retry, CLOCK_MONOTONIC, l->retry_usec, 0, on_retry, l);
        if (r < 0)
                return r;
        (void) sd_event_source_set_enabled(l->retry, SD_EVENT_OFF);
        (void) sd_event_source_set_description(l->retry, l->description);

        *ret = TAKE_PTR(l);
        return 0;
}

Listener *listener_free(Listener *l) {
        if (!l)
                return NULL;
        l->retry = sd_event_source_disable_unref(l->retry);
        l->io = sd_event_source_disable_unref(l->io);
        safe_close(l->fd);
        free(l->name);
        free(l->description);
        sd_event_unref(l->event);
        free(l);
        return NULL;
}

void listener_connection_closed(Listener *l) {
        if (l)
                listener_resume(l);
}

bool listener_is_paused(const Listener *l) {
        return l && l->paused;
}

int listener_get_fd(const Listener *l) {
        return l ? l->fd : -EBADF;
}

void listener_get_stats(const Listener *l, ListenerStats *ret) {
        *ret = l ? l->stats : (ListenerStats) {};
}

/* --- unix sockets --- */

int unix_listen(const char *what, const char *path, mode_t mode, gid_t gid, int *ret_fd, struct stat *ret_st,
                HydraError *err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        struct stat st;
        int r;

        if (strlen(path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "%s path '%s' is too long", what, path);
        strcpy(sa.sun_path, path);

        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return hydra_error_set(err, -errno, "%s: socket: %s", what, strerror(errno));
        /* A socket left by a hydrad that died goes; anything else at that path is not ours to remove. */
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode))
                        return hydra_error_set(err, -EEXIST, "'%s' exists and is not a socket", path);
                if (unlink(path) < 0 && errno != ENOENT)
                        return hydra_error_set(err, -errno, "remove stale %s '%s': %s", what, path, strerror(errno));
        } else if (errno != ENOENT)
                return hydra_error_set(err, -errno, "stat '%s': %s", path, strerror(errno));
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return hydra_error_set(err, -errno, "bind %s '%s': %s", what, path, strerror(errno));

        if (chmod(path, mode) < 0) {
                r = hydra_error_set(err, -errno, "chmod %s '%s': %s", what, path, strerror(errno));
                goto fail;
        }
        if (gid != (gid_t) -1 && chown(path, (uid_t) -1, gid) < 0) {
                r = hydra_error_set(err, -errno, "chown %s '%s' to group %u: %s", what, path, (unsigned) gid,
                                    strerror(errno));
                goto fail;
        }
        if (stat(path, &st) < 0) {
                r = hydra_error_set(err, -errno, "stat '%s': %s", path, strerror(errno));
                goto fail;
        }
        if (listen(fd, SOMAXCONN) < 0) {
                r = hydra_error_set(err, -errno, "listen on %s '%s': %s", what, path, strerror(errno));
                goto fail;
        }
        if (ret_st)
                *ret_st = st;
        *ret_fd = TAKE_FD(fd);
        return 0;

fail:
        (void) unlink(path);
        return r;
}

int listener_new_unix(sd_event *e, const char *what, const char *path, mode_t mode, gid_t gid,
                      const ListenerConfig *cfg, Listener **ret, HydraError *err) {
        _cleanup_free_ char *name = NULL;
        ListenerConfig c = *cfg;
        int fd, r;

        r = unix_listen(what, path, mode, gid, &fd, NULL, err);
        if (r < 0)
                return r;
        if (!c.name) {
                if (asprintf(&name, "%s '%s'", what, path) < 0)
                        name = NULL;
                c.name = name ?: path;
        }
        r = listener_new(e, fd, &c, ret);
        if (r < 0) {
                (void) unlink(path);
                return hydra_error_set(err, r, "watch %s '%s': %s", what, path, strerror(-r));
        }
        return 0;
}
