/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-event.h>

#include "error.h"
#include "macro.h"

/* A unix socket whose every connection is forwarded to a TCP address, on the loop: the CRI socket of the isolated
 * VM (RUN_DIR/isolated/containerd.sock -> 127.0.0.1:PORT, QEMU's user-net forward to the guest's containerd).
 *
 * The socket may outlive its target: while there is none (the VM is not running), each connection goes to the
 * fallback (hydrad's top answers every gRPC call on it UNAVAILABLE with the reason), or without one is closed at
 * once. The fallback's connections count toward the cap with the forwarded ones.
 *
 * Nothing blocks and nothing grows without bound: each direction of a connection has a buffer of
 * PROXY_BUFFER_SIZE and a side is not read while the buffer it fills is full; at most PROXY_CONNECTIONS_MAX
 * connections are open, the next ones are closed at once. An EOF on one side is passed on as a shutdown(SHUT_WR)
 * of the other once what came before it is delivered; a pair is closed when both directions are done, on an
 * error, or when the TCP connect fails (within PROXY_CONNECT_TIMEOUT_USEC). */

typedef struct Proxy Proxy;

#define PROXY_CONNECTIONS_MAX 256U
#define PROXY_BUFFER_SIZE (64U * 1024U)
#define PROXY_CONNECT_TIMEOUT_USEC (10ULL * 1000000ULL)

/* Serves a connection while the proxy has no target. */
typedef struct ProxyFallback {
        /* Takes fd (also on failure). Returns 0, or a negative errno that the listener reports (EMFILE and the like
         * pause it, listener.h). */
        int (*serve)(int fd, void *userdata);
        /* The connections it holds now. May be NULL (then none are counted). */
        unsigned (*count)(void *userdata);
        void *userdata;
} ProxyFallback;

/* Binds listen_path (a stale socket there is removed first; anything else there is -EEXIST), gives it mode and
 * group (gid (gid_t) -1: leave it) before listening, and starts accepting. target_host is a numeric IPv4 or IPv6
 * address (nothing here waits for a name lookup), or NULL with target_port 0: no target yet. Returns 0, or a
 * negative errno with err naming the path. */
int proxy_new(sd_event *e, const char *listen_path, mode_t mode, gid_t gid, const char *target_host,
              uint16_t target_port, Proxy **ret, HydraError *err);

/* Forwards the connections accepted from now on to host:port (as proxy_new() takes it); the open ones keep theirs.
 * Returns 0, or a negative errno with err (the target is unchanged). */
int proxy_set_target(Proxy *p, const char *host, uint16_t port, HydraError *err);
/* No target: every forwarded connection is closed (both sides see EOF or a reset), new ones go to the fallback. */
void proxy_clear_target(Proxy *p);
bool proxy_has_target(const Proxy *p);

/* Borrowed until replaced; NULL: without a target, connections are closed at once. */
void proxy_set_fallback(Proxy *p, const ProxyFallback *fallback);

/* Closes the listener and every connection (both sides see EOF or a reset) and removes the socket. Accepts NULL;
 * returns NULL. */
Proxy *proxy_free(Proxy *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(Proxy *, proxy_free);

/* Forwarded connections open now, connecting ones included (not the fallback's). */
unsigned proxy_connections(const Proxy *p);
