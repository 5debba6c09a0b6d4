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
/* The longest line line_matcher_last() keeps. */
#define LINE_MATCHER_LAST_MAX 200U

/* What a systemd guest prints on its console when a unit fails: "[FAILED] Failed to start csi-grpc-proxy.service -
 * ...", "csi-grpc-proxy.service: Main process exited, code=exited, status=203/EXEC". The readiness detail quotes
 * the last such line while the guest is not ready. */
#define GUEST_FAILURE_PATTERN "FAILED|Failed to start|Main process exited"

/* Console text made fit for a message (one log line, a proto3 string): terminal escape sequences (CSI, OSC, and
 * ESC + one byte) removed, each run of line breaks written as " | " (none at either end), other control bytes
 * removed, a tab as a space, bytes that are not well-formed UTF-8 as '?'. Writes at most size - 1 bytes and a NUL
 * to dst (size >= 1); a longer result keeps its end (the last lines), starting on a whole character and, if one
 * is within it, just after a " | ". Returns the length written. Pure. */
size_t console_text_clean(const void *src, size_t n, char *dst, size_t size);

typedef struct LineMatcher LineMatcher;

/* regex is a POSIX extended regex, matched against each line the guest prints and against the line it is printing
 * (its last LINE_MATCHER_LINE_MAX bytes). CR and LF end lines ("\r\n" once); NUL bytes are dropped. Returns 0, or
 * -EINVAL with err quoting the regex and regcomp's complaint, or -ENOMEM. */
int line_matcher_new(const char *regex, LineMatcher **ret, HydraError *err);

/* The other way of matching: every complete line, cleaned as console_text_clean() cleans it, is matched, and the
 * last one that matched is kept (line_matcher_last()); a line still being printed is not. For what the guest
 * reports while it boots (GUEST_FAILURE_PATTERN). Returns as line_matcher_new(). */
int line_matcher_new_last(const char *regex, LineMatcher **ret, HydraError *err);

/* Returns true once the regex matched (and from then on, until line_matcher_reset()); made by
 * line_matcher_new_last(): true if a line of these bytes matched. */
bool line_matcher_feed(LineMatcher *m, const void *data, size_t size);

/* The last line that matched (line_matcher_new_last()), cleaned, at most LINE_MATCHER_LAST_MAX bytes (cut with
 * "..."); NULL if none has. */
const char *line_matcher_last(const LineMatcher *m);

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
