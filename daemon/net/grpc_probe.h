/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* The containerd readiness probe: containerd's Version over gRPC (/containerd.services.version.v1.Version/Version),
 * made on a worker thread (worker.h) so that the loop never waits for gRPC. One channel and one call per probe:
 * a probe says whether containerd answers now, not whether it answered an hour ago.
 *
 * Built into hydrad, not into hydra_core: the core reaches it through grpc_probe_prober (probe.h's GrpcProber). */

typedef struct GrpcProbe GrpcProbe;

/* Called on the loop, exactly once unless the probe was cancelled; the probe is freed when it returns (the
 * callback may call grpc_probe_cancel(), which then does nothing). detail: containerd's version when ready,
 * otherwise the gRPC status and its message ("UNAVAILABLE: failed to connect to all addresses; ..."). */
typedef void (*grpc_probe_done_t)(GrpcProbe *p, bool ready, const char *detail, void *userdata);

/* target is a gRPC target ("127.0.0.1:35000", "unix:/run/containerd/containerd.sock"); timeout_usec is the call's
 * deadline, connecting included. Returns 0, or a negative errno (then no callback follows). */
int grpc_probe_start(sd_event *e, const char *target, uint64_t timeout_usec, grpc_probe_done_t cb, void *userdata,
                     GrpcProbe **ret);

/* Stops the probe and frees it: no callback follows. Waits for the thread, which notices within ~20 ms and then
 * tears its channel down. Accepts NULL; returns NULL. */
GrpcProbe *grpc_probe_cancel(GrpcProbe *p);

/* The same, for manager_set_grpc_prober(). */
typedef struct GrpcProber GrpcProber;
extern const GrpcProber grpc_probe_prober;

/* Finds field 1 (string version) of a containerd VersionResponse (string version = 1; string revision = 2;).
 * An absent field is "". Returns 0, -EBADMSG for bytes that are not such a message, or -ENOBUFS if the version
 * does not fit in ret_size bytes with its NUL. Exposed for the tests. */
int grpc_probe_parse_version(const void *data, size_t size, char *ret, size_t ret_size);
