/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"
#include "macro.h"

/* A listening socket on the loop that stays calm when connections or file descriptors run out (issue 9): the API
 * socket, each console.sock and the CRI proxy socket.
 *
 * Each wakeup accepts up to LISTENER_ACCEPTS_PER_WAKEUP connections (epoll is level-triggered: the rest is seen
 * on the next iteration) and hands each one to on_connection, which owns the fd from then on. Two limits:
 *
 *  - max_connections: while count() says that many are open, a new connection is accepted and closed at once
 *    (refuse() may first write a line to it): its client learns now instead of waiting in the backlog.
 *  - the process's: accept4() failing with EMFILE, ENFILE, ENOBUFS or ENOMEM leaves the connection in the backlog,
 *    and epoll would report it again at once: a loop that just returns spins at 100% CPU (issue 9). The listener
 *    pauses instead: its fd is not watched until listener_connection_closed() says an fd was freed, or
 *    retry_usec later. on_connection failing with one of these errors pauses it the same way.
 *
 * Warnings (refusals, pauses, failed connections) are rate-limited: at most one line per
 * LISTENER_WARN_INTERVAL_USEC per listener, saying how many were left unsaid since the previous one. */

typedef struct Listener Listener;

#define LISTENER_RETRY_USEC_DEFAULT (1000ULL * 1000ULL)
#define LISTENER_WARN_INTERVAL_USEC (10ULL * 1000000ULL)
#define LISTENER_ACCEPTS_PER_WAKEUP 64U

typedef struct ListenerConfig {
        const char *name;        /* for messages: "console '/run/hydra/host/console.sock'" (copied) */
        const char *description; /* of the sd-event sources, e.g. "console-listen" (copied) */
        unsigned max_connections; /* 0: no cap */
        uint64_t retry_usec;     /* pause after EMFILE and the like; 0: LISTENER_RETRY_USEC_DEFAULT */
        /* Takes fd (also on failure). Returns 0, or a negative errno that the listener reports (rate-limited). */
        int (*on_connection)(int fd, void *userdata);
        /* Connections open now; required with max_connections. */
        unsigned (*count)(void *userdata);
        /* At the cap, before fd is closed: may write a refusal to it (without blocking). May be NULL. */
        void (*refuse)(int fd, void *userdata);
        void *userdata;
} ListenerConfig;

/* Watches listen_fd (a listening, non-blocking socket) and takes it: it is closed by listener_free(), or here on
 * failure. Returns 0 or a negative errno. */
int listener_new(sd_event *e, int listen_fd, const ListenerConfig *cfg, Listener **ret);

/* Stops watching and closes the socket (the caller removes its path if it has one). Accepts NULL; returns NULL. */
Listener *listener_free(Listener *l);
DEFINE_TRIVIAL_CLEANUP_FUNC(Listener *, listener_free);

/* One of our connections closed: a paused listener resumes now rather than at its timer. Accepts NULL. */
void listener_connection_closed(Listener *l);

bool listener_is_paused(const Listener *l);
int listener_get_fd(const Listener *l);

/* Counters since listener_new(), for tests and messages. */
typedef struct ListenerStats {
        uint64_t accepted; /* handed to on_connection */
        uint64_t refused;  /* closed at the cap */
        uint64_t paused;   /* times accept4() or on_connection ran out of a resource */
        uint64_t warnings; /* lines logged */
} ListenerStats;
void listener_get_stats(const Listener *l, ListenerStats *ret);

/* Binds a unix stream socket at path and listens on it (non-blocking, close-on-exec). A socket file left at path
 * (by a hydrad that died) is removed first; anything else there is -EEXIST. The mode and group (gid (gid_t) -1:
 * leave it) are set before listen(): until then a connect() is refused, so no one slips in under the umask's
 * mode. On failure nothing is left at path. what names the socket in err ("console socket"). ret_st (may be NULL)
 * gets the socket file's stat, to tell later whether the file at path is still ours. */
int unix_listen(const char *what, const char *path, mode_t mode, gid_t gid, int *ret_fd, struct stat *ret_st,
                HydraError *err);

/* unix_listen() and listener_new() in one, for a socket people connect to (a console, the CRI socket): cfg->name
 * may be NULL (then "WHAT 'PATH'"). On failure nothing is left at path; on success the caller removes path when
 * it frees the listener. */
int listener_new_unix(sd_event *e, const char *what, const char *path, mode_t mode, gid_t gid,
                      const ListenerConfig *cfg, Listener **ret, HydraError *err);
