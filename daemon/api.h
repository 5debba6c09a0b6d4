/* SPDX-License-Identifier: MIT */
#pragma once

#include <systemd/sd-event.h>

#include "error.h"
#include "manager.h"
#include "proxy.h"

/* The gRPC front end: the only daemon module that includes grpc/ server headers (with api_pb.c, which converts
 * between the core and the hydra.v1 messages). gRPC's completion queue runs on a thread of its own and hands every
 * finished tag to the loop through an eventfd; all work happens on the loop. */

typedef struct Api Api;

/* Initializes gRPC (signals must already be blocked), takes the socket's lock, and starts serving. activated_fd
 * is the listening socket systemd passed (socket activation; api_new takes it, also on failure), or -EBADF: then
 * api_new refuses a live daemon on the same socket, replaces a stale socket file and binds it (mode 0660). */
int api_new(sd_event *e, Manager *m, const HydraConfig *config, int activated_fd, Api **ret, HydraError *err);

/* Stops accepting, answers in-flight calls (a grace period, then cancels), ends streams with UNAVAILABLE; done is
 * called on the loop once gRPC is fully down. */
void api_shutdown(Api *a, void (*done)(void *userdata), void *userdata);

/* What the VM of role gives its CRI socket's connections while its guest is down (vm_set_cri_fallback): a gRPC
 * server of their own that answers every call UNAVAILABLE with the reason. Valid until api_free(). */
const ProxyFallback *api_cri_fallback(Api *a, Role role);

Api *api_free(Api *a);
