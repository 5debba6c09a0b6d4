/* SPDX-License-Identifier: MIT */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "macro.h"

/* hydractl's gRPC transport: the ONLY client file that includes grpc/ (a gRPC upgrade touches this file and
 * daemon/api.c). Messages go in and come out as protobuf-c messages; the method table is the caller's. */

typedef struct RpcClient RpcClient;

/* The outcome of a call that failed: a canonical gRPC status code (0 OK, 3 INVALID_ARGUMENT, 14 UNAVAILABLE...)
 * and the peer's message, in a fixed buffer. */
typedef struct RpcStatus {
        int code;
        char message[2048];
} RpcStatus;

#define RPC_STATUS_OK 0
#define RPC_STATUS_CANCELLED 1
#define RPC_STATUS_DEADLINE_EXCEEDED 4
#define RPC_STATUS_NOT_FOUND 5
#define RPC_STATUS_PERMISSION_DENIED 7
#define RPC_STATUS_INTERNAL 13
#define RPC_STATUS_UNAVAILABLE 14

/* No deadline at all (watch). */
#define RPC_NO_DEADLINE INT64_C(-1)

/* Initializes the gRPC library (once per process) and a channel to the unix socket at socket_path. The channel
 * connects lazily: an unreachable daemon shows up as UNAVAILABLE on the first call. Returns NULL on OOM. */
RpcClient *rpc_client_new(const char *socket_path);

/* Tears down the channel and shuts the gRPC library down (blocking, so that no gRPC thread outlives us).
 * Accepts NULL; returns NULL. */
RpcClient *rpc_client_free(RpcClient *c);

/* One unary call to method (e.g. "/hydra.v1.Hydra/GetVm"). timeout_ms is the call's deadline (or
 * RPC_NO_DEADLINE). On success returns 0 and *ret_reply (free with protobuf_c_message_free_unpacked(_, NULL)).
 * On failure returns -1 and fills *status (never RPC_STATUS_OK). */
int rpc_call_unary(RpcClient *c, const char *method, const ProtobufCMessage *request,
                   const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                   ProtobufCMessage **ret_reply, RpcStatus *status);

/* Called for each message of a server stream; the message is borrowed (freed after the callback returns).
 * Return 0 to keep reading, > 0 to end the stream quietly (the call is cancelled), < 0 likewise. */
typedef int (*RpcStreamHandler)(const ProtobufCMessage *message, void *userdata);

/* Returns true when the stream should end now (e.g. a signal arrived). Polled a few times a second. */
typedef bool (*RpcInterruptCheck)(void *userdata);

/* A server-streaming call: sends request, hands every reply message to handler until the server ends the
 * stream, the deadline passes, handler returns non-zero, or interrupted() says so.
 * Returns 0 when the server ended the stream with OK, 1 when we ended it (handler or interrupted()), 2 when the
 * deadline passed, -1 on any other failure (status filled). */
int rpc_call_server_stream(RpcClient *c, const char *method, const ProtobufCMessage *request,
                           const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                           RpcStreamHandler handler, RpcInterruptCheck interrupted, void *userdata,
                           RpcStatus *status);

/* What rpc_call_unary_with_stream() does with the stream beside the call. */
typedef struct RpcCompanionStream {
        const char *method;                    /* e.g. "/hydra.v1.Hydra/WatchEvents" */
        const ProtobufCMessage *request;
        const ProtobufCMessageDescriptor *reply_descriptor;
        RpcStreamHandler handler;              /* each message; non-zero: stop reading (the call goes on) */
        void (*tick)(void *userdata);          /* about every RPC_TICK_MS while waiting; may be NULL */
        void *userdata;
} RpcCompanionStream;

#define RPC_TICK_MS 100

/* A unary call with a server stream beside it (StartVm while WatchEvents shows its progress): opens the stream,
 * starts the call once the stream is established (so that none of the call's events is missed), hands every
 * stream message to the handler while the call runs, and cancels the stream when the call completes. The stream
 * failing (say, a daemon without it) does not fail the call. Uses a completion queue of its own, so it may run
 * while another thread uses c. Returns as rpc_call_unary(). */
int rpc_call_unary_with_stream(RpcClient *c, const char *method, const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                               ProtobufCMessage **ret_reply, const RpcCompanionStream *stream, RpcStatus *status);

DEFINE_TRIVIAL_CLEANUP_FUNC(RpcClient *, rpc_client_free);
