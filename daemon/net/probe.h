/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/net: hydrad's network side around a running guest: readiness probes (this file), the CRI socket's proxy
 * (proxy.h), and apart, as a library of its own, the one gRPC client of the daemon: containerd's Version for the
 * readiness probe (grpc_probe.h). It sees base/ only. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "error.h"
#include "macro.h"

/* Readiness probes: a pattern on the serial console, and a TCP connection that stays up. (containerd's Version
 * over gRPC is in grpc_probe.c, outside the core.) */

/* --- console pattern --- */

/* A getty's prompt: "hydra-guest login: ", "debian login: ". It has no newline, so it is matched against the
 * unfinished line too. "$" keeps a line of text that merely contains "login:" from matching, "Last login: Mon ..."
 * included (which only follows a login, after the prompt anyway). The last character of the host name is all an
 * unanchored search needs: "[...]+ login" means the same but makes glibc's regexec quadratic in the line length
 * (24 ms for a 4 KiB line of letters, on every chunk). */
#define PROBE_DEFAULT_CONSOLE_PATTERN "[a-zA-Z0-9_.-] login: *$"

/* The longest tail of a line that is kept and matched. */
#define LINE_MATCHER_LINE_MAX 4096U

typedef struct LineMatcher LineMatcher;

/* regex is a POSIX extended regex, matched against each line the guest prints and against the line it is printing
 * (its last LINE_MATCHER_LINE_MAX bytes). CR and LF end lines ("\r\n" once); NUL bytes are dropped. Returns 0, or
 * -EINVAL with err quoting the regex and regcomp's complaint, or -ENOMEM. */
int line_matcher_new(const char *regex, LineMatcher **ret, HydraError *err);

/* Returns true once the regex matched (and from then on, until line_matcher_reset()). */
bool line_matcher_feed(LineMatcher *m, const void *data, size_t size);

/* Forgets the current line and the match: for a new boot. */
void line_matcher_reset(LineMatcher *m);

LineMatcher *line_matcher_free(LineMatcher *m);
DEFINE_TRIVIAL_CLEANUP_FUNC(LineMatcher *, line_matcher_free);

/* --- TCP --- */

typedef struct TcpProbe TcpProbe;

/* Called on the loop, exactly once unless the probe was cancelled; the probe is freed when it returns (the
 * callback may call tcp_probe_cancel(), which then does nothing). why says what was seen: "data received",
 * "no answer", "connection refused", "closed by peer", "connection reset by peer", "timed out", ... */
typedef void (*tcp_probe_done_t)(TcpProbe *p, bool ready, const char *why, void *userdata);

#define TCP_PROBE_NUDGE "HEAD / HTTP/1.0\r\n\r\n"

/* Connects to host:port (a numeric address: no name lookup) without waiting, sends TCP_PROBE_NUDGE, and is ready when
 * the peer answers anything within hold_usec. A connection that merely stays open does not count: QEMU's user-net
 * forward accepts on the host side before the guest does, and holds the connection open, silent, while the guest
 * is still booting (then closes it if nothing listens). timeout_usec bounds the connect. Returns 0, or a negative
 * errno (then no callback follows). */
int tcp_probe_start(sd_event *e, const char *host, uint16_t port, uint64_t hold_usec, uint64_t timeout_usec,
                    tcp_probe_done_t cb, void *userdata, TcpProbe **ret);

/* Stops the probe and frees it: no callback follows. Accepts NULL; returns NULL. */
TcpProbe *tcp_probe_cancel(TcpProbe *p);
DEFINE_TRIVIAL_CLEANUP_FUNC(TcpProbe *, tcp_probe_cancel);

/* --- containerd --- */

/* containerd's Version over gRPC, for the readiness probe. gRPC lives outside the core (daemon/grpc_probe.c, in
 * hydrad), so the core reaches it through this (hydrad passes grpc_probe_prober); NULL: containerd probes never pass. */
typedef void (*grpc_prober_done_t)(void *probe, bool ready, const char *detail, void *userdata);
typedef struct GrpcProber {
        int (*start)(sd_event *e, const char *target, uint64_t timeout_usec, grpc_prober_done_t done,
                     void *userdata, void **ret);
        void (*cancel)(void *probe);
} GrpcProber;
