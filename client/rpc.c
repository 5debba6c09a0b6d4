/* SPDX-License-Identifier: MIT */
/* Every grpc_* call of hydractl lives here (gRPC C core 1.51, Debian 12). One channel, one pluck completion
 * queue, one call at a time. */
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <grp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "macro.h"
#include "rpc.h"

struct RpcClient {
        char *socket_path;
        grpc_channel *channel;
        grpc_completion_queue *cq;
};

/* How often a blocked stream looks at its interrupt check. */
#define RPC_POLL_INTERVAL_MS 200

_printf_(3, 4) static int status_set(RpcStatus *status, int code, const char *fmt, ...) {
        va_list ap;

        status->code = code;
        va_start(ap, fmt);
        (void) vsnprintf(status->message, sizeof(status->message), fmt, ap);
        va_end(ap);
        return -1;
}

/* gRPC's own log lines (connection attempts and the like) would garble our one-line errors: the status we print
 * says what went wrong. Show them only when the user asked gRPC for them. */
static void on_gpr_log(gpr_log_func_args *args) {
        fprintf(stderr, "hydractl: grpc: %s:%d: %s\n", args->file, args->line, args->message);
}
static void on_gpr_log_quiet(gpr_log_func_args *args) {
}

RpcClient *rpc_client_new(const char *socket_path) {
        _cleanup_free_ char *target = NULL;
        grpc_channel_credentials *creds;
        RpcClient *c;

        c = calloc(1, sizeof(*c));
        if (!c)
                return NULL;
        c->socket_path = strdup(socket_path);
        if (!c->socket_path || asprintf(&target, "unix:%s", socket_path) < 0) {
                free(c->socket_path);
                free(c);
                return NULL;
        }

        gpr_set_log_function(getenv("GRPC_VERBOSITY") || getenv("GRPC_TRACE") ? on_gpr_log : on_gpr_log_quiet);
        grpc_init();

        creds = grpc_insecure_credentials_create();
        c->channel = grpc_channel_create(target, creds, NULL);
        grpc_channel_credentials_release(creds);
        c->cq = grpc_completion_queue_create_for_pluck(NULL);
        return c;
}

RpcClient *rpc_client_free(RpcClient *c) {
        if (!c)
                return NULL;

        if (c->cq) {
                grpc_event ev;

                /* Every call has completed by now, so the shutdown event is immediate. */
                grpc_completion_queue_shutdown(c->cq);
                do
                        ev = grpc_completion_queue_pluck(c->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
                while (ev.type != GRPC_QUEUE_SHUTDOWN);
                grpc_completion_queue_destroy(c->cq);
        }
        if (c->channel)
                grpc_channel_destroy(c->channel);
        grpc_shutdown_blocking();
        free(c->socket_path);
        free(c);
        return NULL;
}

/* gRPC's UNAVAILABLE text for a missing socket is a paragraph about "addresses"; a connect() of our own says
 * plainly why the daemon cannot be reached. Only called once a call has failed, so the daemon's accept loop never
 * sees the probe otherwise. */
static void explain_unavailable(const RpcClient *c, RpcStatus *status) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = -EBADF;
        int r;

        if (strlen(c->socket_path) >= sizeof(sa.sun_path))
                r = -ENAMETOOLONG;
        else {
                strcpy(sa.sun_path, c->socket_path);
                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fd < 0)
                        r = -errno;
                else
                        r = connect(fd, (const struct sockaddr *) &sa, sizeof(sa)) < 0 ? -errno : 0;
        }
        if (r == 0) {
                /* Reachable now: the daemon itself said UNAVAILABLE (e.g. shutting down), or lost the call. */
                if (status->message[0] == '\0')
                        status_set(status, RPC_STATUS_UNAVAILABLE, "hydrad at %s is unavailable", c->socket_path);
                return;
        }
        /* The socket's mode and group are the first gate (hydrad.conf's socket_group, hydrad.socket's SocketGroup=):
         * say which group opens it. */
        if (r == -EACCES) {
                struct stat st;
                struct group *g;

                if (stat(c->socket_path, &st) < 0)
                        status_set(status, RPC_STATUS_PERMISSION_DENIED,
                                   "cannot reach hydrad at %s: permission denied (a directory on the way is closed to "
                                   "you; use the API as root or as a member of hydrad's socket group)", c->socket_path);
                else if ((g = getgrgid(st.st_gid)) && st.st_gid != 0)
                        status_set(status, RPC_STATUS_PERMISSION_DENIED,
                                   "cannot reach hydrad at %s: permission denied (the socket is mode %04o, group '%s': "
                                   "use the API as root or as a member of group '%s')", c->socket_path,
                                   (unsigned) (st.st_mode & 07777), g->gr_name, g->gr_name);
                else
                        status_set(status, RPC_STATUS_PERMISSION_DENIED,
                                   "cannot reach hydrad at %s: permission denied (the socket is mode %04o, gid %u: only "
                                   "root or its owner may use it)", c->socket_path, (unsigned) (st.st_mode & 07777),
                                   (unsigned) st.st_gid);
                return;
        }
        /* Keep what the daemon or the transport said when it is more than "could not connect" (the daemon said
         * "shutting down" and is gone now, or died in the middle of a call: "Socket closed"). */
        if (status->message[0] != '\0' && !strstr(status->message, "failed to connect")) {
                char said[sizeof(status->message)];

                memcpy(said, status->message, sizeof(said));
                status_set(status, RPC_STATUS_UNAVAILABLE, "cannot reach hydrad at %s: %s (%.512s)", c->socket_path,
                           strerror(-r), said);
        } else
                status_set(status, RPC_STATUS_UNAVAILABLE, "cannot reach hydrad at %s: %s", c->socket_path,
                           strerror(-r));
}

static gpr_timespec deadline_from_ms(int64_t timeout_ms) {
        if (timeout_ms < 0)
                return gpr_inf_future(GPR_CLOCK_REALTIME);
        return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

static int pack_request(const ProtobufCMessage *request, grpc_byte_buffer **ret, RpcStatus *status) {
        size_t len = protobuf_c_message_get_packed_size(request);
        grpc_slice slice;
        uint8_t *buf;

        if (len == 0)
                slice = grpc_empty_slice();
        else {
                buf = malloc(len);
                if (!buf)
                        return status_set(status, RPC_STATUS_INTERNAL, "out of memory");
                (void) protobuf_c_message_pack(request, buf);
                slice = grpc_slice_new(buf, len, free); /* takes buf */
        }
        *ret = grpc_raw_byte_buffer_create(&slice, 1);
        grpc_slice_unref(slice);
        return 0;
}

/* Decodes and frees bb. */
static int unpack_reply(grpc_byte_buffer *bb, const char *method, const ProtobufCMessageDescriptor *descriptor,
                        ProtobufCMessage **ret, RpcStatus *status) {
        grpc_byte_buffer_reader reader;
        ProtobufCMessage *m = NULL;
        grpc_slice slice;

        if (grpc_byte_buffer_reader_init(&reader, bb)) {
                slice = grpc_byte_buffer_reader_readall(&reader);
                m = protobuf_c_message_unpack(descriptor, NULL, GRPC_SLICE_LENGTH(slice),
                                              GRPC_SLICE_START_PTR(slice));
                grpc_slice_unref(slice);
                grpc_byte_buffer_reader_destroy(&reader);
        }
        grpc_byte_buffer_destroy(bb);
        if (!m)
                return status_set(status, RPC_STATUS_INTERNAL, "cannot decode the reply of %s (%s)", method,
                                  descriptor->name);
        *ret = m;
        return 0;
}

/* The parts of RECV_STATUS_ON_CLIENT, released in one place. */
typedef struct CallStatus {
        grpc_metadata_array trailing;
        grpc_status_code code;
        grpc_slice details;
        const char *error_string;
} CallStatus;

static void call_status_init(CallStatus *cs) {
        grpc_metadata_array_init(&cs->trailing);
        cs->code = GRPC_STATUS_UNKNOWN;
        cs->details = grpc_empty_slice();
        cs->error_string = NULL;
}

static void call_status_done(CallStatus *cs) {
        grpc_metadata_array_destroy(&cs->trailing);
        grpc_slice_unref(cs->details);
        gpr_free((void *) cs->error_string);
}

static void call_status_to_status(const CallStatus *cs, RpcStatus *status) {
        size_t n = GRPC_SLICE_LENGTH(cs->details);

        if (n >= sizeof(status->message))
                n = sizeof(status->message) - 1;
        status->code = cs->code;
        memcpy(status->message, GRPC_SLICE_START_PTR(cs->details), n);
        status->message[n] = '\0';
}

static grpc_call *call_new(RpcClient *c, const char *method, int64_t timeout_ms) {
        grpc_slice m = grpc_slice_from_copied_string(method);
        grpc_call *call;

        call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, c->cq, m, NULL,
                                        deadline_from_ms(timeout_ms), NULL);
        grpc_slice_unref(m);
        return call;
}

/* Waits for tag. With an interrupt check, wakes up now and then and cancels the call once it says so (the tag
 * then completes promptly). Returns the event's success flag. */
static bool wait_tag(RpcClient *c, grpc_call *call, void *tag, RpcInterruptCheck interrupted, void *userdata,
                     bool *cancelled) {
        for (;;) {
                bool poll = interrupted && !*cancelled;
                gpr_timespec deadline = poll ? deadline_from_ms(RPC_POLL_INTERVAL_MS)
                                             : gpr_inf_future(GPR_CLOCK_REALTIME);
                grpc_event ev = grpc_completion_queue_pluck(c->cq, tag, deadline, NULL);

                switch (ev.type) {
                case GRPC_OP_COMPLETE:
                        /* A busy stream never times out: look for the interruption after each message too. */
                        if (poll && interrupted(userdata)) {
                                (void) grpc_call_cancel(call, NULL);
                                *cancelled = true;
                        }
                        return ev.success;
                case GRPC_QUEUE_TIMEOUT:
                        if (poll && interrupted(userdata)) {
                                (void) grpc_call_cancel(call, NULL);
                                *cancelled = true;
                        }
                        break;
                case GRPC_QUEUE_SHUTDOWN:
                default:
                        /* Cannot happen: we shut the queue down only in rpc_client_free(). */
                        abort();
                }
        }
}

int rpc_call_unary(RpcClient *c, const char *method, const ProtobufCMessage *request,
                   const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                   ProtobufCMessage **ret_reply, RpcStatus *status) {
        grpc_byte_buffer *send = NULL, *recv = NULL;
        grpc_metadata_array initial;
        grpc_op ops[6] = {};
        grpc_call_error e;
        bool cancelled = false, ok;
        grpc_call *call;
        CallStatus cs;
        int r;

        status->code = RPC_STATUS_OK;
        status->message[0] = '\0';

        if (pack_request(request, &send, status) < 0)
                return -1;
        call = call_new(c, method, timeout_ms);
        if (!call) {
                grpc_byte_buffer_destroy(send);
                return status_set(status, RPC_STATUS_INTERNAL, "cannot create a call to %s", method);
        }
        grpc_metadata_array_init(&initial);
        call_status_init(&cs);

        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = send;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &recv;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &cs.trailing;
        ops[5].data.recv_status_on_client.status = &cs.code;
        ops[5].data.recv_status_on_client.status_details = &cs.details;
        ops[5].data.recv_status_on_client.error_string = &cs.error_string;

        e = grpc_call_start_batch(call, ops, ELEMENTSOF(ops), ops, NULL);
        if (e != GRPC_CALL_OK)
                r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s (grpc_call_error %d)",
                               method, (int) e);
        else {
                ok = wait_tag(c, call, ops, NULL, NULL, &cancelled);
                if (!ok)
                        r = status_set(status, RPC_STATUS_INTERNAL, "call to %s failed", method);
                else if (cs.code != GRPC_STATUS_OK) {
                        call_status_to_status(&cs, status);
                        r = -1;
                } else if (!recv)
                        r = status_set(status, RPC_STATUS_INTERNAL, "%s returned OK without a reply", method);
                else {
                        r = unpack_reply(recv, method, reply_descriptor, ret_reply, status);
                        recv = NULL;
                }
        }
        if (r < 0 && status->code == RPC_STATUS_UNAVAILABLE)
                explain_unavailable(c, status);

        if (recv)
                grpc_byte_buffer_destroy(recv);
        grpc_byte_buffer_destroy(send);
        grpc_metadata_array_destroy(&initial);
        call_status_done(&cs);
        grpc_call_unref(call);
        return r;
}

int rpc_call_server_stream(RpcClient *c, const char *method, const ProtobufCMessage *request,
                           const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                           RpcStreamHandler handler, RpcInterruptCheck interrupted, void *userdata,
                           RpcStatus *status) {
        grpc_op send_ops[4] = {}, status_op = {}, recv_op = {};
        grpc_byte_buffer *send = NULL, *recv = NULL;
        bool cancelled = false, ended_by_us = false;
        grpc_metadata_array initial;
        grpc_call_error e;
        grpc_call *call;
        CallStatus cs;
        int r = 0;

        status->code = RPC_STATUS_OK;
        status->message[0] = '\0';

        if (pack_request(request, &send, status) < 0)
                return -1;
        call = call_new(c, method, timeout_ms);
        if (!call) {
                grpc_byte_buffer_destroy(send);
                return status_set(status, RPC_STATUS_INTERNAL, "cannot create a call to %s", method);
        }
        grpc_metadata_array_init(&initial);
        call_status_init(&cs);

        send_ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        send_ops[1].op = GRPC_OP_SEND_MESSAGE;
        send_ops[1].data.send_message.send_message = send;
        send_ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        send_ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        send_ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial;
        e = grpc_call_start_batch(call, send_ops, ELEMENTSOF(send_ops), send_ops, NULL);
        if (e != GRPC_CALL_OK) {
                r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s (grpc_call_error %d)",
                               method, (int) e);
                goto finish;
        }

        /* The status batch is in flight for the whole stream: it completes when the server ends the call. */
        status_op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        status_op.data.recv_status_on_client.trailing_metadata = &cs.trailing;
        status_op.data.recv_status_on_client.status = &cs.code;
        status_op.data.recv_status_on_client.status_details = &cs.details;
        status_op.data.recv_status_on_client.error_string = &cs.error_string;
        e = grpc_call_start_batch(call, &status_op, 1, &status_op, NULL);
        if (e != GRPC_CALL_OK) {
                /* Cannot wait for a status that will never be asked for: cancel and collect the first batch. */
                (void) grpc_call_cancel(call, NULL);
                (void) wait_tag(c, call, send_ops, NULL, NULL, &cancelled);
                r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s (grpc_call_error %d)",
                               method, (int) e);
                goto finish;
        }

        if (wait_tag(c, call, send_ops, interrupted, userdata, &cancelled))
                for (;;) {
                        ProtobufCMessage *m = NULL;

                        recv_op.op = GRPC_OP_RECV_MESSAGE;
                        recv_op.data.recv_message.recv_message = &recv;
                        e = grpc_call_start_batch(call, &recv_op, 1, &recv_op, NULL);
                        if (e != GRPC_CALL_OK) {
                                (void) grpc_call_cancel(call, NULL);
                                cancelled = true;
                                r = status_set(status, RPC_STATUS_INTERNAL, "cannot read from %s (grpc_call_error %d)",
                                               method, (int) e);
                                break;
                        }
                        if (!wait_tag(c, call, &recv_op, interrupted, userdata, &cancelled) || !recv)
                                break; /* end of stream, or the call failed: the status says which */

                        if (unpack_reply(recv, method, reply_descriptor, &m, status) < 0) {
                                recv = NULL;
                                (void) grpc_call_cancel(call, NULL);
                                cancelled = true;
                                r = -1;
                                break;
                        }
                        recv = NULL;
                        r = handler(m, userdata);
                        protobuf_c_message_free_unpacked(m, NULL);
                        if (r != 0) {
                                (void) grpc_call_cancel(call, NULL);
                                cancelled = ended_by_us = true;
                                r = 0;
                                break;
                        }
                }
        if (cancelled && !ended_by_us && r == 0)
                ended_by_us = true; /* interrupted() said so */

        (void) wait_tag(c, call, &status_op, NULL, NULL, &cancelled);
        if (r < 0)
                goto finish;
        if (ended_by_us)
                r = 1;
        else if (cs.code == GRPC_STATUS_OK)
                r = 0;
        else if (cs.code == GRPC_STATUS_DEADLINE_EXCEEDED && timeout_ms >= 0)
                r = 2;
        else {
                call_status_to_status(&cs, status);
                r = -1;
        }

finish:
        if (r < 0 && status->code == RPC_STATUS_UNAVAILABLE)
                explain_unavailable(c, status);
        if (recv)
                grpc_byte_buffer_destroy(recv);
        grpc_byte_buffer_destroy(send);
        grpc_metadata_array_destroy(&initial);
        call_status_done(&cs);
        grpc_call_unref(call);
        return r;
}

/* --- a unary call with a stream beside it --- */

/* How long the call waits for the stream to be established before starting anyway. */
#define COMPANION_SETUP_MS 2000

typedef enum CompanionTag {
        TAG_STREAM_START,  /* the stream's first batch: send the request, receive initial metadata */
        TAG_STREAM_RECV,   /* one message of the stream */
        TAG_STREAM_STATUS, /* the stream ended */
        TAG_CALL,          /* the unary call's only batch */
        _TAG_MAX,
} CompanionTag;

typedef struct Companion {
        grpc_completion_queue *cq;
        grpc_call *stream_call, *call;
        grpc_byte_buffer *stream_send, *stream_recv, *send, *recv;
        grpc_metadata_array stream_initial, initial;
        CallStatus stream_status, status;
        bool pending[_TAG_MAX];
        int tags[_TAG_MAX]; /* their addresses are the tags */
        bool call_started, stream_reading;
} Companion;

static bool companion_batch(Companion *co, grpc_call *call, const grpc_op *ops, size_t n, CompanionTag tag) {
        if (grpc_call_start_batch(call, ops, n, &co->tags[tag], NULL) != GRPC_CALL_OK)
                return false;
        co->pending[tag] = true;
        return true;
}

static void companion_post_recv(Companion *co) {
        grpc_op op = { .op = GRPC_OP_RECV_MESSAGE };

        op.data.recv_message.recv_message = &co->stream_recv;
        co->stream_reading = companion_batch(co, co->stream_call, &op, 1, TAG_STREAM_RECV);
        if (!co->stream_reading)
                (void) grpc_call_cancel(co->stream_call, NULL);
}

static bool companion_start_call(Companion *co) {
        grpc_op ops[6] = {};

        co->call_started = true;
        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = co->send;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &co->initial;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &co->recv;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &co->status.trailing;
        ops[5].data.recv_status_on_client.status = &co->status.code;
        ops[5].data.recv_status_on_client.status_details = &co->status.details;
        ops[5].data.recv_status_on_client.error_string = &co->status.error_string;
        return companion_batch(co, co->call, ops, ELEMENTSOF(ops), TAG_CALL);
}

static bool companion_busy(const Companion *co) {
        for (size_t i = 0; i < _TAG_MAX; i++)
                if (co->pending[i])
                        return true;
        return false;
}

int rpc_call_unary_with_stream(RpcClient *c, const char *method, const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *reply_descriptor, int64_t timeout_ms,
                               ProtobufCMessage **ret_reply, const RpcCompanionStream *stream, RpcStatus *status) {
        Companion co = {};
        grpc_op sops[4] = {}, status_op = {};
        gpr_timespec setup_deadline;
        bool call_done = false, call_ok = false;
        grpc_slice m;
        int r = 0;

        status->code = RPC_STATUS_OK;
        status->message[0] = '\0';

        if (pack_request(request, &co.send, status) < 0)
                return -1;
        if (pack_request(stream->request, &co.stream_send, status) < 0) {
                grpc_byte_buffer_destroy(co.send);
                return -1;
        }
        grpc_metadata_array_init(&co.initial);
        grpc_metadata_array_init(&co.stream_initial);
        call_status_init(&co.status);
        call_status_init(&co.stream_status);
        co.cq = grpc_completion_queue_create_for_next(NULL);

        m = grpc_slice_from_copied_string(method);
        co.call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, co.cq, m, NULL,
                                           deadline_from_ms(timeout_ms), NULL);
        grpc_slice_unref(m);
        /* The stream ends with the call at the latest. */
        m = grpc_slice_from_copied_string(stream->method);
        co.stream_call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, co.cq, m, NULL,
                                                  deadline_from_ms(timeout_ms), NULL);
        grpc_slice_unref(m);
        if (!co.call || !co.stream_call) {
                r = status_set(status, RPC_STATUS_INTERNAL, "cannot create a call to %s", method);
                goto finish;
        }

        sops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        sops[1].op = GRPC_OP_SEND_MESSAGE;
        sops[1].data.send_message.send_message = co.stream_send;
        sops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        sops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        sops[3].data.recv_initial_metadata.recv_initial_metadata = &co.stream_initial;
        status_op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        status_op.data.recv_status_on_client.trailing_metadata = &co.stream_status.trailing;
        status_op.data.recv_status_on_client.status = &co.stream_status.code;
        status_op.data.recv_status_on_client.status_details = &co.stream_status.details;
        status_op.data.recv_status_on_client.error_string = &co.stream_status.error_string;
        if (!companion_batch(&co, co.stream_call, sops, ELEMENTSOF(sops), TAG_STREAM_START) ||
            !companion_batch(&co, co.stream_call, &status_op, 1, TAG_STREAM_STATUS)) {
                /* No stream then: cancel what started of it and make the call alone. */
                (void) grpc_call_cancel(co.stream_call, NULL);
                if (!companion_start_call(&co))
                        r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s", method);
        }
        setup_deadline = deadline_from_ms(COMPANION_SETUP_MS);

        /* Every started batch completes exactly once (cancelled ones too): run until none is left. */
        while (companion_busy(&co)) {
                grpc_event ev = grpc_completion_queue_next(co.cq, deadline_from_ms(RPC_TICK_MS), NULL);
                CompanionTag tag;

                if (ev.type == GRPC_QUEUE_TIMEOUT) {
                        if (!co.call_started && r == 0 &&
                            gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), setup_deadline) > 0 &&
                            !companion_start_call(&co)) {
                                r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s", method);
                                (void) grpc_call_cancel(co.stream_call, NULL);
                        }
                        if (stream->tick && !call_done)
                                stream->tick(stream->userdata);
                        continue;
                }
                if (ev.type != GRPC_OP_COMPLETE)
                        abort(); /* the queue is shut down only below */
                tag = (CompanionTag) ((int *) ev.tag - co.tags);
                co.pending[tag] = false;

                switch (tag) {
                case TAG_STREAM_START:
                        if (ev.success && !call_done)
                                companion_post_recv(&co);
                        if (!co.call_started && r == 0 && !companion_start_call(&co)) {
                                r = status_set(status, RPC_STATUS_INTERNAL, "cannot start a call to %s", method);
                                (void) grpc_call_cancel(co.stream_call, NULL);
                        }
                        break;

                case TAG_STREAM_RECV: {
                        ProtobufCMessage *msg = NULL;
                        RpcStatus ignored;

                        co.stream_reading = false;
                        if (!ev.success || !co.stream_recv)
                                break; /* the stream ended: the call goes on without it */
                        if (unpack_reply(co.stream_recv, stream->method, stream->reply_descriptor, &msg,
                                         &ignored) < 0) {
                                co.stream_recv = NULL;
                                (void) grpc_call_cancel(co.stream_call, NULL);
                                break;
                        }
                        co.stream_recv = NULL;
                        /* A message that arrived with the call's reply is still shown (a notice may be in it). */
                        if (stream->handler(msg, stream->userdata) == 0 && !call_done)
                                companion_post_recv(&co);
                        else
                                (void) grpc_call_cancel(co.stream_call, NULL);
                        protobuf_c_message_free_unpacked(msg, NULL);
                        break;
                }

                case TAG_STREAM_STATUS:
                        break;

                case TAG_CALL:
                        call_done = true;
                        call_ok = ev.success;
                        /* The stream has served its purpose. */
                        (void) grpc_call_cancel(co.stream_call, NULL);
                        break;

                default:
                        abort();
                }
        }

        if (r == 0) {
                if (!call_ok)
                        r = status_set(status, RPC_STATUS_INTERNAL, "call to %s failed", method);
                else if (co.status.code != GRPC_STATUS_OK) {
                        call_status_to_status(&co.status, status);
                        r = -1;
                } else if (!co.recv)
                        r = status_set(status, RPC_STATUS_INTERNAL, "%s returned OK without a reply", method);
                else {
                        r = unpack_reply(co.recv, method, reply_descriptor, ret_reply, status);
                        co.recv = NULL;
                }
        }
        if (r < 0 && status->code == RPC_STATUS_UNAVAILABLE)
                explain_unavailable(c, status);

finish:
        if (co.call)
                grpc_call_unref(co.call);
        if (co.stream_call)
                grpc_call_unref(co.stream_call);
        grpc_completion_queue_shutdown(co.cq);
        while (grpc_completion_queue_next(co.cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN)
                ;
        grpc_completion_queue_destroy(co.cq);
        if (co.recv)
                grpc_byte_buffer_destroy(co.recv);
        if (co.stream_recv)
                grpc_byte_buffer_destroy(co.stream_recv);
        grpc_byte_buffer_destroy(co.send);
        grpc_byte_buffer_destroy(co.stream_send);
        grpc_metadata_array_destroy(&co.initial);
        grpc_metadata_array_destroy(&co.stream_initial);
        call_status_done(&co.status);
        call_status_done(&co.stream_status);
        return r;
}
