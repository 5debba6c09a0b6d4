/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <string.h>

#include "grpc_probe.h"
#include "grpc_status.h"
#include "log.h"
#include "macro.h"
#include "probe.h"
#include "worker.h"

/* The call runs on a worker thread with a completion queue of its own, polled in GRPC_PROBE_POLL_USEC steps so
 * that a cancellation is noticed at once (the gRPC C core has no fd for the loop to watch). The thread writes
 * ready and detail; the loop reads them in the done callback, after the thread was joined.
 *
 * The request is an empty VersionRequest (google.protobuf.Empty): zero bytes. The response is decoded by hand:
 * one string field does not justify generated code. */

#define CONTAINERD_VERSION_METHOD "/containerd.services.version.v1.Version/Version"
#define GRPC_PROBE_POLL_USEC (20ULL * 1000ULL)
#define GRPC_PROBE_RESPONSE_MAX (64 * 1024) /* a VersionResponse is two short strings */

struct GrpcProbe {
        Worker *worker;
        char *target;
        uint64_t timeout_usec;
        grpc_probe_done_t cb;
        grpc_prober_done_t prober_cb; /* started through grpc_probe_prober */
        void *userdata;
        bool grpc_initialized;
        bool dispatching;             /* in the callback: grpc_probe_cancel() must not free us */

        /* Written by the thread, read on the loop once it ended. */
        bool ready;
        char detail[512];
};

static GrpcProbe *grpc_probe_free(GrpcProbe *p) {
        if (!p)
                return NULL;
        worker_cancel(p->worker);
        free(p->target);
        /* Reference-counted: hydrad's own grpc_init() keeps gRPC up; alone (the tests) this tears it down. */
        if (p->grpc_initialized)
                grpc_shutdown();
        free(p);
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(GrpcProbe *, grpc_probe_free);

/* --- the response --- */

/* Returns the number of bytes read, or -EBADMSG. */
static int read_varint(const uint8_t *p, size_t size, uint64_t *ret) {
        uint64_t v = 0;

        for (size_t i = 0; i < size && i < 10; i++) {
                v |= (uint64_t) (p[i] & 0x7f) << (7 * i);
                if (!(p[i] & 0x80)) {
                        *ret = v;
                        return (int) i + 1;
                }
        }
        return -EBADMSG;
}

int grpc_probe_parse_version(const void *data, size_t size, char *ret, size_t ret_size) {
        const uint8_t *p = data;
        const uint8_t *version = NULL;
        size_t version_len = 0;

        if ((!data && size > 0) || !ret || ret_size == 0)
                return -EINVAL;

        while (size > 0) {
                uint64_t key, len;
                int n;

                n = read_varint(p, size, &key);
                if (n < 0)
                        return n;
                p += n, size -= (size_t) n;
                if (key >> 3 == 0)
                        return -EBADMSG;

                switch (key & 7) {
                case 0: /* varint */
                        n = read_varint(p, size, &len);
                        if (n < 0)
                                return n;
                        p += n, size -= (size_t) n;
                        break;
                case 1: /* fixed64 */
                case 5: /* fixed32 */
                        len = (key & 7) == 1 ? 8 : 4;
                        if (len > size)
                                return -EBADMSG;
                        p += len, size -= len;
                        break;
                case 2: /* length-delimited */
                        n = read_varint(p, size, &len);
                        if (n < 0)
                                return n;
                        p += n, size -= (size_t) n;
                        if (len > size)
                                return -EBADMSG;
                        if (key >> 3 == 1) {
                                /* The last one wins, as protobuf has it. */
                                version = p;
                                version_len = (size_t) len;
                        }
                        p += len, size -= (size_t) len;
                        break;
                default: /* groups, long gone */
                        return -EBADMSG;
                }
                if (key >> 3 == 1 && (key & 7) != 2)
                        return -EBADMSG;
        }

        if (version && memchr(version, '\0', version_len))
                return -EBADMSG;
        if (version_len >= ret_size)
                return -ENOBUFS;
        if (version_len > 0)
                memcpy(ret, version, version_len);
        ret[version_len] = '\0';
        return 0;
}

/* --- the thread --- */


static gpr_timespec deadline_after(uint64_t usec) {
        return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_micros((int64_t) usec, GPR_TIMESPAN));
}

/* The response as one flat buffer: -ENOMEM, -EBADMSG (too large), or 0 with the slice. */
static int response_read(grpc_byte_buffer *bb, grpc_slice *ret) {
        grpc_byte_buffer_reader reader;

        if (grpc_byte_buffer_length(bb) > GRPC_PROBE_RESPONSE_MAX)
                return -EBADMSG;
        if (!grpc_byte_buffer_reader_init(&reader, bb))
                return -EBADMSG;
        *ret = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        return 0;
}

static void probe_conclude(GrpcProbe *p, grpc_status_code status, grpc_slice details, grpc_byte_buffer *response) {
        grpc_slice flat;
        char version[256];
        int r;

        if (status != GRPC_STATUS_OK) {
                char *msg = grpc_slice_to_c_string(details);

                (void) snprintf(p->detail, sizeof(p->detail), "%s: %s", grpc_status_name(status),
                                isempty(msg) ? "(no message)" : msg);
                gpr_free(msg);
                return;
        }
        if (!response) {
                (void) snprintf(p->detail, sizeof(p->detail), "OK but no VersionResponse");
                return;
        }

        r = response_read(response, &flat);
        if (r < 0) {
                (void) snprintf(p->detail, sizeof(p->detail), "cannot read the VersionResponse: %s", strerror(-r));
                return;
        }
        r = grpc_probe_parse_version(GRPC_SLICE_START_PTR(flat), GRPC_SLICE_LENGTH(flat), version, sizeof(version));
        grpc_slice_unref(flat);
        if (r < 0) {
                (void) snprintf(p->detail, sizeof(p->detail), "bad VersionResponse: %s", strerror(-r));
                return;
        }

        p->ready = true;
        (void) snprintf(p->detail, sizeof(p->detail), "%s", version);
}

static int grpc_probe_run(Worker *w, void *userdata) {
        GrpcProbe *p = userdata;
        grpc_arg args[] = {
                /* Straight to the forward, whatever $http_proxy says. */
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_ENABLE_HTTP_PROXY, .value.integer = 0 },
                { .type = GRPC_ARG_INTEGER, .key = (char *) GRPC_ARG_ENABLE_RETRIES, .value.integer = 0 },
                { .type = GRPC_ARG_INTEGER,
                  .key = (char *) GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                  .value.integer = GRPC_PROBE_RESPONSE_MAX },
        };
        grpc_channel_args channel_args = { .num_args = ELEMENTSOF(args), .args = args };
        grpc_metadata_array initial_md, trailing_md;
        grpc_byte_buffer *request, *response = NULL;
        grpc_status_code status = GRPC_STATUS_UNKNOWN;
        grpc_slice details = grpc_empty_slice();
        grpc_channel_credentials *creds;
        grpc_completion_queue *cq;
        grpc_channel *channel;
        grpc_call *call;
        grpc_call_error e;
        grpc_op ops[6] = {};
        grpc_event ev;
        bool cancelled = false;

        cq = grpc_completion_queue_create_for_next(NULL);
        creds = grpc_insecure_credentials_create();
        channel = grpc_channel_create(p->target, creds, &channel_args);
        grpc_channel_credentials_release(creds);
        call = grpc_channel_create_call(channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq,
                                        grpc_slice_from_static_string(CONTAINERD_VERSION_METHOD), NULL,
                                        deadline_after(p->timeout_usec), NULL);
        request = grpc_raw_byte_buffer_create(NULL, 0);
        grpc_metadata_array_init(&initial_md);
        grpc_metadata_array_init(&trailing_md);

        ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
        ops[1].op = GRPC_OP_SEND_MESSAGE;
        ops[1].data.send_message.send_message = request;
        ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
        ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
        ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
        ops[4].op = GRPC_OP_RECV_MESSAGE;
        ops[4].data.recv_message.recv_message = &response;
        ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
        ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
        ops[5].data.recv_status_on_client.status = &status;
        ops[5].data.recv_status_on_client.status_details = &details;

        e = grpc_call_start_batch(call, ops, ELEMENTSOF(ops), call, NULL);
        if (e != GRPC_CALL_OK)
                (void) snprintf(p->detail, sizeof(p->detail), "cannot start the call (grpc_call_error %d)", (int) e);
        else {
                /* The deadline ends the call; a cancellation ends it sooner. */
                for (;;) {
                        ev = grpc_completion_queue_next(cq, deadline_after(GRPC_PROBE_POLL_USEC), NULL);
                        if (ev.type == GRPC_OP_COMPLETE)
                                break;
                        if (!cancelled && worker_cancelled(w)) {
                                (void) grpc_call_cancel(call, NULL);
                                cancelled = true;
                        }
                }
                probe_conclude(p, ev.success ? status : GRPC_STATUS_UNKNOWN, details, response);
        }

        grpc_byte_buffer_destroy(request);
        if (response)
                grpc_byte_buffer_destroy(response);
        grpc_slice_unref(details);
        grpc_metadata_array_destroy(&initial_md);
        grpc_metadata_array_destroy(&trailing_md);
        grpc_call_unref(call);
        grpc_channel_destroy(channel);
        grpc_completion_queue_shutdown(cq);
        do
                ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        while (ev.type != GRPC_QUEUE_SHUTDOWN);
        grpc_completion_queue_destroy(cq);

        return cancelled ? -ECANCELED : 0;
}

/* --- the loop --- */

static void on_grpc_probe_done(Worker *w, int r, void *userdata) {
        GrpcProbe *p = userdata;

        p->worker = NULL; /* freed by worker.c when we return */
        if (r < 0) {
                p->ready = false;
                (void) snprintf(p->detail, sizeof(p->detail), "%s", strerror(-r));
        }

        log_debug("gRPC probe of '%s': %s: %s", p->target, p->ready ? "ready" : "not ready", p->detail);
        p->dispatching = true;
        if (p->cb)
                p->cb(p, p->ready, p->detail, p->userdata);
        else
                p->prober_cb(p, p->ready, p->detail, p->userdata);
        grpc_probe_free(p);
}

static int probe_start(sd_event *e, const char *target, uint64_t timeout_usec, grpc_probe_done_t cb,
                       grpc_prober_done_t prober_cb, void *userdata, GrpcProbe **ret) {
        _cleanup_(grpc_probe_freep) GrpcProbe *p = NULL;
        int r;

        if (!e || isempty(target) || (!cb && !prober_cb))
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->target = strdup(target);
        if (!p->target)
                return -ENOMEM;
        p->timeout_usec = timeout_usec;
        p->cb = cb;
        p->prober_cb = prober_cb;
        p->userdata = userdata;

        grpc_init();
        p->grpc_initialized = true;

        r = worker_start(e, "grpc-probe", grpc_probe_run, NULL, on_grpc_probe_done, p, &p->worker);
        if (r < 0)
                return r;

        if (ret)
                *ret = p;
        TAKE_PTR(p);
        return 0;
}

int grpc_probe_start(sd_event *e, const char *target, uint64_t timeout_usec, grpc_probe_done_t cb, void *userdata,
                     GrpcProbe **ret) {
        if (!cb)
                return -EINVAL;
        return probe_start(e, target, timeout_usec, cb, NULL, userdata, ret);
}

GrpcProbe *grpc_probe_cancel(GrpcProbe *p) {
        if (!p || p->dispatching)
                return NULL;
        return grpc_probe_free(p);
}

/* --- GrpcProber --- */

static int prober_start(sd_event *e, const char *target, uint64_t timeout_usec, grpc_prober_done_t done,
                        void *userdata, void **ret) {
        GrpcProbe *p = NULL;
        int r;

        if (!done)
                return -EINVAL;
        r = probe_start(e, target, timeout_usec, NULL, done, userdata, &p);
        if (r < 0)
                return r;
        if (ret)
                *ret = p;
        return 0;
}

static void prober_cancel(void *probe) {
        grpc_probe_cancel(probe);
}

const GrpcProber grpc_probe_prober = {
        .start = prober_start,
        .cancel = prober_cancel,
};
