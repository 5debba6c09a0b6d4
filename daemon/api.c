/* SPDX-License-Identifier: MIT */
#include <fcntl.h>
#include <limits.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/grpc_posix.h>
#include <grpc/grpc_security.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "api.h"
#include "api_pb.h"
#include "authz.h"
#include "console.h"
#include "listener.h"
#include "grpc/health/v1/health.pb-c.h"
#include "hydra/v1/hydra.pb-c.h"
#include "grpc_status.h"
#include "log.h"
#include "pbcheck.h"
#include "vm.h"
#include "worker.h"

#define SHUTDOWN_GRACE_USEC (5ULL * 1000000ULL)
#define STREAM_QUEUE_MAX 256U
#define MAX_REQUEST_SIZE (1024U * 1024U)

typedef struct Api Api;
typedef struct Call Call;
typedef struct Tag Tag;
typedef struct ConsoleRead ConsoleRead;

/* Every operation we give gRPC carries a Tag; the completion-queue thread moves finished tags to the loop. */
struct Tag {
        void (*fn)(Tag *t, bool ok);
        bool ok;
        Tag *next;
};

typedef struct Method {
        const char *path;
        bool streaming;
        bool mutating;          /* changes VMs: needs API_ACCESS_FULL (daemon/authz.h) */
        void (*handler)(Call *c, const uint8_t *data, size_t size);
} Method;

/* One armed grpc_server_request_registered_call per method, re-armed as soon as it fires. */
typedef struct Slot {
        Tag tag;
        Api *api;
        const Method *method;   /* NULL: the generic slot that answers unknown methods */
        void *registered;
        grpc_call *call;
        gpr_timespec deadline;
        grpc_metadata_array metadata;
        grpc_byte_buffer *payload;
        grpc_call_details details;
        bool armed;
} Slot;

struct Call {
        Api *api;
        grpc_call *call;
        const Method *method;

        Tag close_tag;          /* RECV_CLOSE_ON_SERVER: the call is over (cancelled says how) */
        int cancelled;
        bool close_posted;      /* RECV_CLOSE_ON_SERVER is in flight, on its own or in the final batch */
        bool close_in_send;     /* ... in the final batch: the send tag brings it back */
        bool closed;
        Tag send_tag;           /* one send batch in flight at a time */
        bool sending;
        grpc_byte_buffer *send_buf;
        bool metadata_sent;
        bool status_sent;

        VmOp *op;               /* a Stop/Destroy/Register waiting on the VM */
        ManagerOp *start_op;    /* a Start: waiting for the VM it starts after, then on the VM */
        Role role;

        Subscription *sub;      /* WatchEvents, ConsoleLog follow */
        ConsoleRead *console_read; /* ConsoleLog: the stored log, being read by a worker */
        grpc_byte_buffer *queue[STREAM_QUEUE_MAX];
        unsigned q_head, q_len;
        uint64_t dropped;
        uint64_t lost;          /* dropped and not yet reported to the client (WatchEvents: a Lost event) */
        bool report_lost;
        bool end_pending;
        grpc_status_code end_code;
        char end_message[256];

        Call *next, *prev;
};

typedef struct Conn {
        int fd;                 /* handed to gRPC: gRPC owns it; we only shut it down at exit */
        ino_t ino;
        dev_t dev;
        uid_t uid;              /* the peer, when it connected (SO_PEERCRED) */
        pid_t pid;
        ApiAccess access;       /* what its calls may do */
} Conn;

/* A VM's CRI socket while its guest is down (the part "the CRI socket" below). */
typedef struct CriFallback {
        Api *api;
        Role role;
        ProxyFallback proxy;    /* what the VM's CRI socket is given */
        grpc_server *server;    /* made at the first connection */
        Tag slot_tag;           /* the one grpc_server_request_call, re-armed as soon as it fires */
        bool armed;
        grpc_call *call;
        grpc_call_details details;
        grpc_metadata_array metadata;
        Tag shutdown_tag;
        bool shutdown_pending;
        Conn *conns;            /* handed to its server: counted for the socket's cap, cut at shutdown */
        size_t n_conns;
} CriFallback;

struct Api {
        sd_event *event;
        Manager *manager;
        const HydraConfig *config;

        grpc_completion_queue *cq;
        grpc_server *server;
        grpc_server_credentials *creds;
        pthread_t thread;
        bool thread_started;
        bool grpc_initialized;

        pthread_mutex_t lock;
        Tag *pending_head, *pending_tail;
        int wake_fd;
        sd_event_source *wake_source;

        int listen_fd;          /* bound early (to refuse a second daemon), watched once gRPC is up */
        bool activated;         /* listen_fd came from systemd (hydrad.socket) */
        Listener *listener;
        int lock_fd;
        char *socket_path;
        char *lock_path;
        dev_t socket_dev;
        ino_t socket_ino;
        gid_t socket_gid;

        Conn *conns;
        size_t n_conns;

        Slot *slots;
        size_t n_slots;
        unsigned slots_armed;
        Call *calls;

        bool shutting_down;
        AuthzPolicy authz;
        uint64_t refused_warned_usec; /* the last "permission denied" line; 0: none yet */
        unsigned refused_unsaid;      /* refusals since then, not logged */
        Tag shutdown_tag;
        bool shutdown_tag_pending;
        sd_event_source *grace_timer;
        void (*shutdown_done)(void *userdata);
        void *shutdown_userdata;
        sd_event_source *finish_source;

        /* The last event packed for WatchEvents: every stream gets a copy of the same bytes. */
        uint64_t event_seq;
        grpc_byte_buffer *event_buf;

        CriFallback cri[_ROLE_MAX]; /* each VM's CRI socket while its containerd cannot be reached */
};

static void call_maybe_free(Call *c);
static void api_maybe_finish(Api *a);
static void console_read_cancel(Call *c);

/* --- the completion-queue thread --- */

static void *cq_thread(void *userdata) {
        Api *a = userdata;

        for (;;) {
                grpc_event ev = grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
                bool was_empty;
                Tag *t;

                if (ev.type == GRPC_QUEUE_SHUTDOWN)
                        break;
                if (ev.type != GRPC_OP_COMPLETE)
                        continue;

                t = ev.tag;
                t->ok = ev.success;
                t->next = NULL;
                pthread_mutex_lock(&a->lock);
                was_empty = !a->pending_head;
                if (a->pending_tail)
                        a->pending_tail->next = t;
                else
                        a->pending_head = t;
                a->pending_tail = t;
                pthread_mutex_unlock(&a->lock);

                if (was_empty) {
                        uint64_t one = 1;
                        (void) !write(a->wake_fd, &one, sizeof(one));
                }
        }
        return NULL;
}

static int on_wake(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Api *a = userdata;
        uint64_t n;
        Tag *t;

        (void) !read(fd, &n, sizeof(n));
        pthread_mutex_lock(&a->lock);
        t = a->pending_head;
        a->pending_head = a->pending_tail = NULL;
        pthread_mutex_unlock(&a->lock);

        while (t) {
                Tag *next = t->next;
                t->fn(t, t->ok);
                t = next;
        }
        return 0;
}

/* --- replies --- */

static grpc_status_code status_from_errno(int r) {
        switch (-r) {
        case 0:
                return GRPC_STATUS_OK;
        case EINVAL:
        case EBADMSG:
                return GRPC_STATUS_INVALID_ARGUMENT;
        case ENXIO: /* HYDRA_ENOTREGISTERED */
                return GRPC_STATUS_NOT_FOUND;
        case EBUSY:
        case ENOLINK: /* HYDRA_EDEPENDENCY */
        case EADDRINUSE:   /* a forward's host port */
        case EADDRNOTAVAIL:
        case ENOENT:
        case ENOEXEC:
        case ENOTDIR:
        case EISDIR:
                return GRPC_STATUS_FAILED_PRECONDITION;
        case ECHILD: /* HYDRA_ELAUNCH */
        case ECANCELED:
                return GRPC_STATUS_ABORTED;
        case ETIMEDOUT:
                return GRPC_STATUS_DEADLINE_EXCEEDED;
        case EACCES:
        case EPERM:
                return GRPC_STATUS_PERMISSION_DENIED;
        case ENOSPC:
        case EDQUOT:
        case ENOMEM:
        case EFBIG:
                return GRPC_STATUS_RESOURCE_EXHAUSTED;
        case ESHUTDOWN:
                return GRPC_STATUS_UNAVAILABLE;
        default:
                return GRPC_STATUS_INTERNAL;
        }
}


static void on_send_done(Tag *t, bool ok);

static int call_start_batch(Call *c, const grpc_op *ops, size_t n) {
        grpc_call_error e;

        e = grpc_call_start_batch(c->call, ops, n, &c->send_tag, NULL);
        if (e != GRPC_CALL_OK) {
                log_error("gRPC: start_batch on %s failed: %d", c->method ? c->method->path : "?", (int) e);
                return -EIO;
        }
        c->sending = true;
        return 0;
}

static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg) {
        size_t n = protobuf_c_message_get_packed_size(msg);
        grpc_slice slice = grpc_slice_malloc(n);
        grpc_byte_buffer *bb;

        protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
        bb = grpc_raw_byte_buffer_create(&slice, 1);
        grpc_slice_unref(slice);
        return bb;
}

/* Ends a call: the message (if code is OK and msg non-NULL) and the status, in one batch. A call answered at
 * once also asks for RECV_CLOSE_ON_SERVER in that batch: one tag per call instead of two, which is one fewer
 * hop between gRPC's thread and the loop. */
static void call_finish(Call *c, grpc_status_code code, const char *message, const ProtobufCMessage *msg) {
        grpc_op ops[4] = {};
        grpc_slice details;
        size_t n = 0;

        if (c->status_sent || c->closed)
                return;
        c->op = NULL;
        c->start_op = manager_op_cancel(c->start_op); /* NULL unless the reply comes before it is done */
        if (!c->metadata_sent) {
                ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
                n++;
                c->metadata_sent = true;
        }
        if (code == GRPC_STATUS_OK && msg) {
                c->send_buf = pack_message(msg);
                ops[n].op = GRPC_OP_SEND_MESSAGE;
                ops[n].data.send_message.send_message = c->send_buf;
                n++;
        }
        details = grpc_slice_from_copied_string(message ? message : "");
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = code;
        ops[n].data.send_status_from_server.status_details = code == GRPC_STATUS_OK ? NULL : &details;
        n++;
        if (!c->close_posted) {
                ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
                ops[n].data.recv_close_on_server.cancelled = &c->cancelled;
                n++;
                c->close_posted = c->close_in_send = true;
        }
        c->status_sent = true;
        if (call_start_batch(c, ops, n) < 0) {
                /* Nothing more will come back for this call: let it be freed. */
                c->closed = true;
                if (c->send_buf)
                        c->send_buf = (grpc_byte_buffer_destroy(c->send_buf), NULL);
        }
        grpc_slice_unref(details);
}

static void call_fail(Call *c, int r, const char *message) {
        if (r >= 0)
                r = -EIO;
        log_debug("API %s: %s: %s", c->method ? c->method->path : "?", grpc_status_name(status_from_errno(r)),
                  message);
        call_finish(c, status_from_errno(r), message, NULL);
}

static void call_fail_error(Call *c, const HydraError *err) {
        call_fail(c, err->code, err->message);
}

static void call_reply_vm(Call *c, const Vm *vm) {
        VmPb p;

        if (vm_pb_init(&p, vm) < 0) {
                vm_pb_done(&p);
                return call_fail(c, -ENOMEM, "out of memory");
        }
        call_finish(c, GRPC_STATUS_OK, NULL, &p.vm.base);
        vm_pb_done(&p);
}

/* --- streams --- */

static void stream_pump(Call *c) {
        grpc_op op = {};

        if (c->sending || c->status_sent || c->closed)
                return;
        if (c->lost > 0 && c->report_lost) {
                /* Before the oldest event still queued: how many were dropped in front of it. */
                Hydra__V1__Event e = HYDRA__V1__EVENT__INIT;
                Hydra__V1__Lost lost = HYDRA__V1__LOST__INIT;

                lost.count = c->lost;
                c->lost = 0;
                e.kind_case = HYDRA__V1__EVENT__KIND_LOST;
                e.lost = &lost;
                e.role = role_to_pb(c->role);
                c->send_buf = pack_message(&e.base);
        } else if (c->q_len == 0) {
                if (c->end_pending)
                        call_finish(c, c->end_code, c->end_message, NULL);
                return;
        } else {
                c->send_buf = c->queue[c->q_head];
                c->queue[c->q_head] = NULL;
                c->q_head = (c->q_head + 1) % STREAM_QUEUE_MAX;
                c->q_len--;
        }
        if (!c->send_buf)
                return;

        op.op = GRPC_OP_SEND_MESSAGE;
        op.data.send_message.send_message = c->send_buf;
        if (call_start_batch(c, &op, 1) < 0)
                c->send_buf = (grpc_byte_buffer_destroy(c->send_buf), NULL);
}

static void stream_push(Call *c, grpc_byte_buffer *bb) {
        if (c->q_len == STREAM_QUEUE_MAX) {
                /* A slow reader cannot grow our memory: drop the oldest. */
                grpc_byte_buffer_destroy(c->queue[c->q_head]);
                c->queue[c->q_head] = NULL;
                c->q_head = (c->q_head + 1) % STREAM_QUEUE_MAX;
                c->q_len--;
                c->dropped++;
                c->lost++;
        }
        c->queue[(c->q_head + c->q_len) % STREAM_QUEUE_MAX] = bb;
        c->q_len++;
        stream_pump(c);
}

static void stream_end(Call *c, grpc_status_code code, const char *message) {
        c->sub = subscription_free(c->sub);
        console_read_cancel(c);
        c->end_pending = true;
        c->end_code = code;
        (void) snprintf(c->end_message, sizeof(c->end_message), "%s", message);
        stream_pump(c);
}

/* One event, packed once for every WatchEvents stream: 1,000 streams cost one encoding and 1,000 references. */
static grpc_byte_buffer *event_pack(Api *a, const HydraEvent *ev, Vm *vm);

static void on_event(Manager *m, const HydraEvent *ev, Vm *vm, void *userdata) {
        Call *c = userdata;
        grpc_byte_buffer *bb;

        if (ev->type == HYDRA_EVENT_CONSOLE)
                return;
        bb = event_pack(c->api, ev, vm);
        if (bb)
                stream_push(c, grpc_byte_buffer_copy(bb));
}

static grpc_byte_buffer *event_pack(Api *a, const HydraEvent *ev, Vm *vm) {
        Hydra__V1__Event e = HYDRA__V1__EVENT__INIT;
        Hydra__V1__StateChange sc = HYDRA__V1__STATE_CHANGE__INIT;
        Hydra__V1__QmpEvent qe = HYDRA__V1__QMP_EVENT__INIT;
        Hydra__V1__Notice ne = HYDRA__V1__NOTICE__INIT;
        Hydra__V1__Readiness re = HYDRA__V1__READINESS__INIT;
        VmPb p;

        if (a->event_buf && a->event_seq == ev->seq)
                return a->event_buf;
        if (a->event_buf)
                grpc_byte_buffer_destroy(a->event_buf);
        a->event_buf = NULL;

        e.seq = ev->seq;
        e.time_unix_usec = (int64_t) ev->time_usec;
        e.role = role_to_pb(ev->role);
        if (ev->type == HYDRA_EVENT_STATE) {
                sc.from = state_to_pb(ev->from);
                sc.to = state_to_pb(ev->to);
                sc.reason = pb_str(ev->reason);
                e.kind_case = HYDRA__V1__EVENT__KIND_STATE_CHANGE;
                e.state_change = &sc;
        } else if (ev->type == HYDRA_EVENT_NOTICE) {
                ne.message = pb_str(ev->notice);
                e.kind_case = HYDRA__V1__EVENT__KIND_NOTICE;
                e.notice = &ne;
        } else if (ev->type == HYDRA_EVENT_PROGRESS) {
                e.kind_case = HYDRA__V1__EVENT__KIND_PROGRESS;
                /* set below, from the Vm's own progress */
        } else if (ev->type == HYDRA_EVENT_READY) {
                VmStatus st;

                vm_get_status(vm, &st);
                re.ready = st.ready;
                re.detail = pb_str(st.ready_detail);
                e.kind_case = HYDRA__V1__EVENT__KIND_READINESS;
                e.readiness = &re;
        } else {
                qe.name = pb_str(ev->qmp_name);
                qe.data_json = pb_str(ev->qmp_data);
                e.kind_case = HYDRA__V1__EVENT__KIND_QMP_EVENT;
                e.qmp_event = &qe;
        }
        if (vm_pb_init(&p, vm) >= 0) {
                e.vm = &p.vm;
                if (e.kind_case == HYDRA__V1__EVENT__KIND_PROGRESS)
                        e.progress = &p.progress;
                a->event_buf = pack_message(&e.base);
                a->event_seq = ev->seq;
        }
        vm_pb_done(&p);
        return a->event_buf;
}

/* --- handlers --- */

/* The RPC's name as the client called it: "RegisterVm" for "/hydra.v1.Hydra/RegisterVm". */
static const char *call_rpc_name(const Call *c) {
        const char *slash;

        if (!c->method)
                return "?";
        slash = strrchr(c->method->path, '/');
        return slash ? slash + 1 : c->method->path;
}

/* Unpacks a request, after checking what protobuf-c does not: every string is UTF-8 without a NUL byte (stored,
 * a bad one would make every conformant client fail to decode GetVm/ListVms; a NUL would cut the string short).
 * Replies INVALID_ARGUMENT naming the field and returns NULL on failure. */
static ProtobufCMessage *call_decode(Call *c, const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                                     size_t size) {
        ProtobufCMessage *m;
        HydraError err;
        char msg[sizeof(err.message) + 64];
        int r;

        hydra_error_clear(&err);
        r = pb_check_strings(desc, data, size, &err);
        if (r == -EINVAL) {
                call_fail(c, -EINVAL, err.message);
                return NULL;
        }
        if (r == -ENOMEM) {
                call_fail(c, -ENOMEM, "out of memory");
                return NULL;
        }
        m = r < 0 ? NULL : protobuf_c_message_unpack(desc, NULL, size, data);
        if (!m) {
                (void) snprintf(msg, sizeof(msg), "the %s request is not a valid protobuf message",
                                call_rpc_name(c));
                call_fail(c, -EINVAL, msg);
        }
        return m;
}

#define DECODE(c, type, fn, data, size) ((type *) call_decode(c, &fn##__descriptor, data, size))

/* Looks up the VM for a request's role; replies with the error itself when there is none. */
static Vm *call_get_vm(Call *c, Hydra__V1__Role pb_role, bool must_be_registered) {
        Role role;
        Vm *vm;

        if (role_from_pb(pb_role, &role) < 0) {
                call_fail(c, -EINVAL, "role: must be host or isolated");
                return NULL;
        }
        vm = manager_get_vm(c->api->manager, role);
        if (must_be_registered && !vm_is_registered(vm)) {
                char msg[64];
                (void) snprintf(msg, sizeof(msg), "VM '%s' is not registered", vm_name(vm));
                call_fail(c, HYDRA_ENOTREGISTERED, msg);
                return NULL;
        }
        c->role = role;
        return vm;
}

static void on_op_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        Call *c = userdata;

        c->op = NULL;
        if (r < 0)
                call_fail(c, r, err ? err->message : strerror(-r));
        else
                call_reply_vm(c, vm);
}

static void register_reply(Call *c, const Vm *vm, bool changed) {
        Hydra__V1__RegisterVmResponse resp = HYDRA__V1__REGISTER_VM_RESPONSE__INIT;
        VmPb p;

        if (vm_pb_init(&p, vm) < 0)
                call_fail(c, -ENOMEM, "out of memory");
        else {
                resp.vm = &p.vm;
                resp.changed = changed;
                call_finish(c, GRPC_STATUS_OK, NULL, &resp.base);
        }
        vm_pb_done(&p);
}

static void on_register_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        Call *c = userdata;

        c->op = NULL;
        if (r < 0)
                call_fail(c, r, err ? err->message : strerror(-r));
        else
                register_reply(c, vm, r > 0);
}

static void handle_register(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__RegisterVmRequest *req = DECODE(c, Hydra__V1__RegisterVmRequest, hydra__v1__register_vm_request,
                                                   data, size);
        VmSpec spec = {};
        HydraError err;
        Vm *vm;
        int r;

        if (!req)
                return;
        hydra_error_clear(&err);
        vm = call_get_vm(c, req->role, false);
        if (!vm)
                goto out;
        if (!req->spec) {
                call_fail(c, -EINVAL, "spec: missing");
                goto out;
        }
        r = spec_from_pb(req->spec, &spec, &err);
        if (r >= 0)
                r = vm_register(vm, &spec, req->apply_on_next_start, on_register_done, c, &c->op, &err);
        vm_spec_done(&spec);
        if (r < 0)
                call_fail_error(c, &err);
        else if (r > 0)
                register_reply(c, vm, false);
        /* r == 0: on_register_done replies */
out:
        hydra__v1__register_vm_request__free_unpacked(req, NULL);
}

static void handle_op_result(Call *c, Vm *vm, int r, const HydraError *err) {
        if (r < 0)
                call_fail_error(c, err);
        else if (r > 0)
                call_reply_vm(c, vm);
        /* r == 0: on_op_done replies */
}

static void on_start_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        Call *c = userdata;

        c->start_op = NULL;
        on_op_done(vm, r, err, c);
}

static void handle_start(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__StartVmRequest *req = DECODE(c, Hydra__V1__StartVmRequest, hydra__v1__start_vm_request, data, size);
        HydraError err;
        Vm *vm;
        int r;

        if (!req)
                return;
        hydra_error_clear(&err);
        vm = call_get_vm(c, req->role, true);
        if (!vm)
                goto out;
        if (req->wait != HYDRA__V1__WAIT_FOR__WAIT_FOR_RUNNING && req->wait != HYDRA__V1__WAIT_FOR__WAIT_FOR_READY) {
                call_fail(c, -EINVAL, "wait: not known (allowed: WAIT_FOR_RUNNING, WAIT_FOR_READY)");
                goto out;
        }
        r = manager_start(c->api->manager, c->role, req->wait == HYDRA__V1__WAIT_FOR__WAIT_FOR_READY,
                          (uint64_t) req->timeout_seconds * 1000000ULL, on_start_done, c, &c->start_op, &err);
        handle_op_result(c, vm, r, &err);
out:
        hydra__v1__start_vm_request__free_unpacked(req, NULL);
}

static void handle_stop(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__StopVmRequest *req = DECODE(c, Hydra__V1__StopVmRequest, hydra__v1__stop_vm_request, data, size);
        HydraError err;
        Vm *vm;
        int r;

        if (!req)
                return;
        hydra_error_clear(&err);
        vm = call_get_vm(c, req->role, true);
        if (!vm)
                goto out;
        r = manager_stop(c->api->manager, c->role, req->force, (uint64_t) req->timeout_seconds * 1000000ULL,
                         on_op_done, c, &c->op, &err);
        handle_op_result(c, vm, r, &err);
out:
        hydra__v1__stop_vm_request__free_unpacked(req, NULL);
}

static void on_destroy_done(Vm *vm, int r, const HydraError *err, void *userdata) {
        Call *c = userdata;
        Hydra__V1__DestroyVmResponse resp = HYDRA__V1__DESTROY_VM_RESPONSE__INIT;

        c->op = NULL;
        if (r < 0)
                call_fail(c, r, err ? err->message : strerror(-r));
        else
                call_finish(c, GRPC_STATUS_OK, NULL, &resp.base);
}

static void handle_destroy(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__DestroyVmRequest *req = DECODE(c, Hydra__V1__DestroyVmRequest, hydra__v1__destroy_vm_request,
                                                  data, size);
        HydraError err;
        Vm *vm;
        int r;

        if (!req)
                return;
        hydra_error_clear(&err);
        vm = call_get_vm(c, req->role, true);
        if (!vm)
                goto out;
        r = vm_destroy(vm, req->keep_cache, on_destroy_done, c, &c->op, &err);
        if (r < 0)
                call_fail_error(c, &err);
        else if (r > 0)
                on_destroy_done(vm, 0, NULL, c);
out:
        hydra__v1__destroy_vm_request__free_unpacked(req, NULL);
}

static void handle_get(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__GetVmRequest *req = DECODE(c, Hydra__V1__GetVmRequest, hydra__v1__get_vm_request, data, size);
        Vm *vm;

        if (!req)
                return;
        vm = call_get_vm(c, req->role, true);
        if (vm)
                call_reply_vm(c, vm);
        hydra__v1__get_vm_request__free_unpacked(req, NULL);
}

static void handle_list(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__ListVmsRequest *req = DECODE(c, Hydra__V1__ListVmsRequest, hydra__v1__list_vms_request, data, size);
        Hydra__V1__ListVmsResponse resp = HYDRA__V1__LIST_VMS_RESPONSE__INIT;
        Hydra__V1__Vm *ptrs[_ROLE_MAX];
        VmPb p[_ROLE_MAX] = {};
        size_t n = 0;
        int r = 0;

        if (!req)
                return;
        for (Role role = 0; role < _ROLE_MAX; role++) {
                Vm *vm = manager_get_vm(c->api->manager, role);
                if (!vm_is_registered(vm))
                        continue;
                r = vm_pb_init(&p[n], vm);
                ptrs[n] = &p[n].vm;
                n++;
                if (r < 0)
                        break;
        }
        if (r < 0)
                call_fail(c, r, "out of memory");
        else {
                resp.n_vms = n;
                resp.vms = ptrs;
                call_finish(c, GRPC_STATUS_OK, NULL, &resp.base);
        }
        for (size_t i = 0; i < n; i++)
                vm_pb_done(&p[i]);
        hydra__v1__list_vms_request__free_unpacked(req, NULL);
}

static void handle_plan(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__PlanVmRequest *req = DECODE(c, Hydra__V1__PlanVmRequest, hydra__v1__plan_vm_request, data, size);
        Hydra__V1__PlanVmResponse resp = HYDRA__V1__PLAN_VM_RESPONSE__INIT;
        static const char *const names[] = { "user-data", "meta-data", "network-config", "vendor-data" };
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        Hydra__V1__PlannedFile pf[ELEMENTSOF(names)], *pfp[ELEMENTSOF(names)];
        char *paths[ELEMENTSOF(names)] = {};
        _cleanup_strv_free_ char **argv = NULL, **root_reasons = NULL;
        _cleanup_free_ char *qemu_user = NULL;
        HydraError err;
        Vm *vm;
        int r;

        if (!req)
                return;
        hydra_error_clear(&err);
        vm = call_get_vm(c, req->role, true);
        if (!vm)
                goto out;
        r = vm_plan(vm, &argv, &files, &qemu_user, &root_reasons, &err);
        if (r < 0) {
                call_fail_error(c, &err);
                goto out;
        }
        resp.n_argv = strv_length(argv);
        resp.argv = argv;
        resp.qemu_user = qemu_user;
        resp.n_qemu_root_reasons = strv_length(root_reasons);
        resp.qemu_root_reasons = root_reasons;

        if (files.user_data) {
                const char *contents[] = { files.user_data, files.meta_data, files.network_config, files.vendor_data };

                for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                        paths[i] = vm_cloud_init_path(vm, names[i]);
                        if (!paths[i]) {
                                call_fail(c, -ENOMEM, "out of memory");
                                goto free_paths;
                        }
                        hydra__v1__planned_file__init(&pf[i]);
                        pf[i].path = paths[i];
                        pf[i].content.data = (uint8_t *) strempty(contents[i]);
                        pf[i].content.len = strlen(strempty(contents[i]));
                        pfp[i] = &pf[i];
                }
                resp.n_files = ELEMENTSOF(names);
                resp.files = pfp;
        }
        call_finish(c, GRPC_STATUS_OK, NULL, &resp.base);
free_paths:
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                free(paths[i]);
out:
        hydra__v1__plan_vm_request__free_unpacked(req, NULL);
}

static void handle_watch(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__WatchEventsRequest *req = DECODE(c, Hydra__V1__WatchEventsRequest, hydra__v1__watch_events_request,
                                                    data, size);
        grpc_op op = {};
        int role = -1, r;

        if (!req)
                return;
        if (req->role != HYDRA__V1__ROLE__ROLE_UNSPECIFIED) {
                Role ro;
                if (role_from_pb(req->role, &ro) < 0) {
                        call_fail(c, -EINVAL, "role: must be host, isolated or unspecified (both)");
                        goto out;
                }
                role = (int) ro;
        }
        c->report_lost = true;
        if (role >= 0)
                c->role = (Role) role;
        r = manager_subscribe(c->api->manager, role, on_event, c, &c->sub);
        if (r < 0) {
                call_fail(c, r, "out of memory");
                goto out;
        }
        /* Headers at once, so that the client knows the stream is live before the first event. */
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        c->metadata_sent = true;
        (void) call_start_batch(c, &op, 1);
out:
        hydra__v1__watch_events_request__free_unpacked(req, NULL);
}

#define CONSOLE_CHUNK_MAX (64U * 1024U)

static void console_push(Call *c, const void *data, size_t size) {
        Hydra__V1__ConsoleChunk chunk = HYDRA__V1__CONSOLE_CHUNK__INIT;

        while (size > 0) {
                size_t n = size < CONSOLE_CHUNK_MAX ? size : CONSOLE_CHUNK_MAX;

                chunk.data.data = (uint8_t *) data;
                chunk.data.len = n;
                stream_push(c, pack_message(&chunk.base));
                data = (const uint8_t *) data + n;
                size -= n;
        }
}

/* ConsoleLog's stored part: up to KEEP + 1 files of a MiB each, read and packed into stream messages by a worker
 * thread (not on the loop: issue 10); the loop queues them when it is done. Meanwhile what the guest prints (with
 * follow) is held back, so that it comes after: the snapshot and the subscription are taken in one loop
 * iteration, no byte falls between them and none comes twice. */
#define CONSOLE_READ_MAX ((uint64_t) STREAM_QUEUE_MAX * CONSOLE_CHUNK_MAX) /* what one stream queue holds */
#define CONSOLE_HELD_MAX (1024U * 1024U)

struct ConsoleRead {
        Call *call;                     /* borrowed; the loop side only */
        Worker *worker;
        ConsoleLogSnapshot *snapshot;   /* the worker's while it runs */
        grpc_byte_buffer **chunks;      /* filled by the worker */
        size_t n_chunks, n_allocated;
        bool follow;
        char *held;                     /* guest output that arrived meanwhile */
        size_t n_held;
};

static ConsoleRead *console_read_free(ConsoleRead *cr) {
        if (!cr)
                return NULL;
        worker_cancel(cr->worker);
        console_log_snapshot_free(cr->snapshot);
        for (size_t i = 0; i < cr->n_chunks; i++)
                if (cr->chunks[i])
                        grpc_byte_buffer_destroy(cr->chunks[i]);
        free(cr->chunks);
        free(cr->held);
        free(cr);
        return NULL;
}

/* The client went away, or hydrad shuts down: the worker stops between two chunks. */
static void console_read_cancel(Call *c) {
        c->console_read = console_read_free(c->console_read);
}

/* On the worker thread: touches nothing but cr's snapshot and chunks. */
static int console_read_run(Worker *w, void *userdata) {
        ConsoleRead *cr = userdata;
        Hydra__V1__ConsoleChunk chunk = HYDRA__V1__CONSOLE_CHUNK__INIT;
        _cleanup_free_ uint8_t *buf = malloc(CONSOLE_CHUNK_MAX);
        size_t k, n;

        if (!buf)
                return -ENOMEM;
        for (;;) {
                /* Full chunks across file boundaries: CONSOLE_READ_MAX bytes fit the stream's queue. */
                for (n = 0; n < CONSOLE_CHUNK_MAX; n += k) {
                        k = console_log_snapshot_read(cr->snapshot, buf + n, CONSOLE_CHUNK_MAX - n);
                        if (k == 0)
                                break;
                }
                if (n == 0)
                        break;
                if (worker_cancelled(w))
                        return -ECANCELED;
                if (cr->n_chunks == cr->n_allocated) {
                        size_t m = cr->n_allocated ? 2 * cr->n_allocated : 16;
                        grpc_byte_buffer **a = reallocarray(cr->chunks, m, sizeof(*a));

                        if (!a)
                                return -ENOMEM;
                        cr->chunks = a;
                        cr->n_allocated = m;
                }
                chunk.data.data = buf;
                chunk.data.len = n;
                cr->chunks[cr->n_chunks++] = pack_message(&chunk.base);
        }
        return 0;
}

static void on_console_read(Worker *w, int r, void *userdata) {
        ConsoleRead *cr = userdata;
        Call *c = cr->call;

        cr->worker = NULL; /* freed when we return */
        c->console_read = NULL;
        if (r < 0) {
                console_read_free(cr);
                return stream_end(c, status_from_errno(r), "cannot read the console log");
        }
        for (size_t i = 0; i < cr->n_chunks; i++)
                stream_push(c, TAKE_PTR(cr->chunks[i]));
        if (cr->n_held > 0)
                console_push(c, cr->held, cr->n_held);
        if (!cr->follow)
                stream_end(c, GRPC_STATUS_OK, "");
        console_read_free(cr);
}

static void on_console_event(Manager *m, const HydraEvent *ev, Vm *vm, void *userdata) {
        Call *c = userdata;
        ConsoleRead *cr = c->console_read;

        if (ev->type != HYDRA_EVENT_CONSOLE)
                return;
        if (!cr)
                return console_push(c, ev->data, ev->size);
        /* The stored log is still being read: this comes after it. Bounded like the stream's queue. */
        if (cr->n_held + ev->size > CONSOLE_HELD_MAX) {
                c->dropped++;
                return;
        }
        if (!cr->held) {
                cr->held = malloc(CONSOLE_HELD_MAX);
                if (!cr->held) {
                        c->dropped++;
                        return;
                }
        }
        memcpy(cr->held + cr->n_held, ev->data, ev->size);
        cr->n_held += ev->size;
}

static void handle_console_log(Call *c, const uint8_t *data, size_t size) {
        Hydra__V1__ConsoleLogRequest *req = DECODE(c, Hydra__V1__ConsoleLogRequest, hydra__v1__console_log_request,
                                                   data, size);
        _cleanup_(console_log_snapshot_freep) ConsoleLogSnapshot *snapshot = NULL;
        grpc_op op = {};
        ConsoleRead *cr;
        Vm *vm;
        int r;

        if (!req)
                return;
        vm = call_get_vm(c, req->role, true);
        if (!vm)
                goto out;
        op.op = GRPC_OP_SEND_INITIAL_METADATA;
        c->metadata_sent = true;
        (void) call_start_batch(c, &op, 1);

        /* The snapshot of the stored log and the subscription in the same loop iteration. */
        r = console_log_snapshot(vm_console_log(vm), CONSOLE_LOG_KEEP_DEFAULT, req->tail_bytes, CONSOLE_READ_MAX,
                                 &snapshot);
        if (r < 0) {
                stream_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                goto out;
        }
        if (req->follow) {
                r = manager_subscribe(c->api->manager, (int) vm_role(vm), on_console_event, c, &c->sub);
                if (r < 0) {
                        stream_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                        goto out;
                }
        }
        if (console_log_snapshot_size(snapshot) == 0) {
                if (!req->follow)
                        stream_end(c, GRPC_STATUS_OK, "");
                goto out;
        }

        cr = calloc(1, sizeof(*cr));
        if (!cr) {
                stream_end(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
                goto out;
        }
        *cr = (ConsoleRead) { .call = c, .snapshot = TAKE_PTR(snapshot), .follow = req->follow };
        r = worker_start(c->api->event, "console-log", console_read_run, NULL, on_console_read, cr, &cr->worker);
        if (r < 0) {
                console_read_free(cr);
                stream_end(c, status_from_errno(r), "cannot start a thread to read the console log");
                goto out;
        }
        c->console_read = cr;
out:
        hydra__v1__console_log_request__free_unpacked(req, NULL);
}

static void handle_health(Call *c, const uint8_t *data, size_t size) {
        Grpc__Health__V1__HealthCheckRequest *req = DECODE(c, Grpc__Health__V1__HealthCheckRequest,
                                                           grpc__health__v1__health_check_request, data, size);
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;

        if (!req)
                return;
        if (!isempty(req->service) && !streq(req->service, "hydra.v1.Hydra"))
                call_finish(c, GRPC_STATUS_NOT_FOUND, "unknown service", NULL);
        else {
                resp.status = c->api->shutting_down ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                                    : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
                call_finish(c, GRPC_STATUS_OK, NULL, &resp.base);
        }
        grpc__health__v1__health_check_request__free_unpacked(req, NULL);
}

/* The connection a call came on: gRPC names it "fd:N" (grpc_server_add_channel_from_fd), and the inode tells that
 * fd N still is the connection we accepted. NULL: unknown (then the call is denied). */
static const Conn *call_conn(Call *c) {
        Api *a = c->api;
        char *peer = grpc_call_get_peer(c->call);
        struct stat st;
        int fd, k;

        k = peer ? sscanf(peer, "fd:%d", &fd) : 0;
        gpr_free(peer);
        if (k != 1 || fstat(fd, &st) < 0)
                return NULL;
        for (size_t i = 0; i < a->n_conns; i++)
                if (a->conns[i].fd == fd && a->conns[i].ino == st.st_ino && a->conns[i].dev == st.st_dev)
                        return &a->conns[i];
        return NULL;
}

/* Answers PERMISSION_DENIED unless the caller may make this call (daemon/authz.h). One log line per
 * LISTENER_WARN_INTERVAL_USEC at most: a local user calling in a loop must not fill the journal. */
static bool call_authorized(Call *c) {
        Api *a = c->api;
        const Conn *conn = call_conn(c);
        const char *name;
        char msg[384];
        uint64_t now = 0;

        if (conn && authz_allows(conn->access, c->method->mutating))
                return true;
        /* "StartVm", but "grpc.health.v1.Health/Check": a name of its own. */
        name = strncmp(c->method->path, "/hydra.v1.Hydra/", 16) == 0 ? call_rpc_name(c) : c->method->path + 1;
        if (conn)
                authz_denied_message(&a->authz, name, c->method->mutating, conn->access, conn->uid, msg, sizeof(msg));
        else
                (void) snprintf(msg, sizeof(msg), "permission denied: hydrad cannot tell who is calling %s", name);
        call_finish(c, GRPC_STATUS_PERMISSION_DENIED, msg, NULL);

        (void) sd_event_now(a->event, CLOCK_MONOTONIC, &now);
        if (a->refused_warned_usec != 0 && now - a->refused_warned_usec < LISTENER_WARN_INTERVAL_USEC) {
                a->refused_unsaid++;
                return false;
        }
        if (a->refused_unsaid > 0)
                log_warning("%s, pid %d (and %u more refusals since the last such line)", msg,
                            conn ? (int) conn->pid : 0, a->refused_unsaid);
        else
                log_warning("%s, pid %d", msg, conn ? (int) conn->pid : 0);
        a->refused_warned_usec = now;
        a->refused_unsaid = 0;
        return false;
}

static const Method methods[] = {
        { "/hydra.v1.Hydra/RegisterVm", false, true, handle_register },
        { "/hydra.v1.Hydra/StartVm", false, true, handle_start },
        { "/hydra.v1.Hydra/StopVm", false, true, handle_stop },
        { "/hydra.v1.Hydra/DestroyVm", false, true, handle_destroy },
        { "/hydra.v1.Hydra/GetVm", false, false, handle_get },
        { "/hydra.v1.Hydra/ListVms", false, false, handle_list },
        { "/hydra.v1.Hydra/WatchEvents", true, false, handle_watch },
        { "/hydra.v1.Hydra/PlanVm", false, false, handle_plan },
        { "/hydra.v1.Hydra/ConsoleLog", true, false, handle_console_log },
        { "/grpc.health.v1.Health/Check", false, false, handle_health },
};

/* --- calls --- */

/* Forgets what the call waits for (a VM op, events) and the events queued for it. */
static void call_drop_waits(Call *c) {
        c->op = vm_op_cancel(c->op);
        c->start_op = manager_op_cancel(c->start_op);
        c->sub = subscription_free(c->sub);
        console_read_cancel(c);
        while (c->q_len > 0) {
                grpc_byte_buffer_destroy(c->queue[c->q_head]);
                c->queue[c->q_head] = NULL;
                c->q_head = (c->q_head + 1) % STREAM_QUEUE_MAX;
                c->q_len--;
        }
}

static void call_maybe_free(Call *c) {
        Api *a = c->api;

        if (c->sending || !c->closed)
                return;

        call_drop_waits(c);
        if (c->prev)
                c->prev->next = c->next;
        else
                a->calls = c->next;
        if (c->next)
                c->next->prev = c->prev;
        grpc_call_unref(c->call);
        free(c);
        api_maybe_finish(a);
}

static void on_send_done(Tag *t, bool ok) {
        Call *c = (Call *) ((char *) t - offsetof(Call, send_tag));

        c->sending = false;
        if (c->send_buf)
                c->send_buf = (grpc_byte_buffer_destroy(c->send_buf), NULL);
        if (c->close_in_send)
                c->closed = true;
        if (!ok && c->method && c->method->streaming && !c->status_sent) {
                /* The client is gone: stop producing; the close tag frees us. */
                c->sub = subscription_free(c->sub);
                console_read_cancel(c);
        } else if (c->method && c->method->streaming)
                stream_pump(c);
        call_maybe_free(c);
}

static void on_close_done(Tag *t, bool ok) {
        Call *c = (Call *) ((char *) t - offsetof(Call, close_tag));

        c->closed = true;
        if (c->cancelled && !c->status_sent)
                log_debug("API %s: cancelled by the client", c->method ? c->method->path : "?");
        /* Whatever was waiting has lost its listener; the VM carries on. */
        c->op = vm_op_cancel(c->op);
        c->start_op = manager_op_cancel(c->start_op);
        c->sub = subscription_free(c->sub);
        console_read_cancel(c);
        call_maybe_free(c);
}

static Call *call_new(Api *a, grpc_call *gc, const Method *method) {
        Call *c;

        c = calloc(1, sizeof(*c));
        if (!c) {
                grpc_call_cancel_with_status(gc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
                grpc_call_unref(gc);
                return NULL;
        }
        c->api = a;
        c->call = gc;
        c->method = method;
        c->close_tag.fn = on_close_done;
        c->send_tag.fn = on_send_done;
        c->next = a->calls;
        if (a->calls)
                a->calls->prev = c;
        a->calls = c;
        return c;
}

/* A call that was not answered at once (it waits on a VM, or streams) learns of the client's cancellation
 * through RECV_CLOSE_ON_SERVER, posted on its own. */
static void call_post_close(Call *c) {
        grpc_op op = {};

        if (c->close_posted || c->closed)
                return;
        op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
        op.data.recv_close_on_server.cancelled = &c->cancelled;
        if (grpc_call_start_batch(c->call, &op, 1, &c->close_tag, NULL) != GRPC_CALL_OK)
                c->closed = true;
        else
                c->close_posted = true;
}

static int read_payload(grpc_byte_buffer *bb, uint8_t **ret, size_t *ret_size) {
        grpc_byte_buffer_reader reader;
        grpc_slice slice;
        size_t n;

        *ret = NULL;
        *ret_size = 0;
        if (!bb)
                return 0;
        if (!grpc_byte_buffer_reader_init(&reader, bb))
                return -EBADMSG;
        slice = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
        n = GRPC_SLICE_LENGTH(slice);
        if (n > MAX_REQUEST_SIZE) {
                grpc_slice_unref(slice);
                return -EFBIG;
        }
        *ret = malloc(n ? n : 1);
        if (!*ret) {
                grpc_slice_unref(slice);
                return -ENOMEM;
        }
        memcpy(*ret, GRPC_SLICE_START_PTR(slice), n);
        *ret_size = n;
        grpc_slice_unref(slice);
        return 0;
}

static int slot_arm(Slot *s);

static void on_slot(Tag *t, bool ok) {
        Slot *s = (Slot *) t;
        Api *a = s->api;
        grpc_call *gc = s->call;
        grpc_byte_buffer *payload = s->payload;
        _cleanup_free_ uint8_t *data = NULL;
        size_t size;
        Call *c;
        int r;

        s->armed = false;
        a->slots_armed--;
        s->call = NULL;
        s->payload = NULL;
        grpc_metadata_array_destroy(&s->metadata);
        if (!s->method)
                grpc_call_details_destroy(&s->details);

        if (!ok) {
                /* The server is shutting down; nothing arrived. */
                if (payload)
                        grpc_byte_buffer_destroy(payload);
                if (gc)
                        grpc_call_unref(gc);
                api_maybe_finish(a);
                return;
        }
        if (!a->shutting_down)
                (void) slot_arm(s);

        c = call_new(a, gc, s->method);
        if (!c) {
                if (payload)
                        grpc_byte_buffer_destroy(payload);
                return;
        }
        if (!s->method) {
                call_finish(c, GRPC_STATUS_UNIMPLEMENTED, "unknown method", NULL);
                call_post_close(c);
                call_maybe_free(c);
                return;
        }

        r = read_payload(payload, &data, &size);
        if (payload)
                grpc_byte_buffer_destroy(payload);
        if (r < 0)
                call_fail(c, r == -EFBIG ? -EINVAL : r, r == -EFBIG ? "request too large" : "request could not be read");
        else if (!call_authorized(c))
                ; /* answered PERMISSION_DENIED */
        else if (a->shutting_down)
                call_finish(c, GRPC_STATUS_UNAVAILABLE, "hydrad is shutting down", NULL);
        else
                s->method->handler(c, data, size);
        call_post_close(c);
        call_maybe_free(c);
}

static int slot_arm(Slot *s) {
        Api *a = s->api;
        grpc_call_error e;

        grpc_metadata_array_init(&s->metadata);
        if (s->method)
                e = grpc_server_request_registered_call(a->server, s->registered, &s->call, &s->deadline, &s->metadata,
                                                        &s->payload, a->cq, a->cq, &s->tag);
        else {
                grpc_call_details_init(&s->details);
                e = grpc_server_request_call(a->server, &s->call, &s->details, &s->metadata, a->cq, a->cq, &s->tag);
        }
        if (e != GRPC_CALL_OK) {
                grpc_metadata_array_destroy(&s->metadata);
                if (!s->method)
                        grpc_call_details_destroy(&s->details);
                log_error("gRPC: cannot request calls for %s: %d", s->method ? s->method->path : "unknown methods", (int) e);
                return -EIO;
        }
        s->armed = true;
        a->slots_armed++;
        return 0;
}

/* --- the socket: ours, so that we know each peer and can refuse a second daemon --- */

/* Forgets the connections gRPC has closed (it does not tell us): the fd is gone, or is another file now.
 * Returns how many are left. */
static size_t conn_list_prune(Conn *conns, size_t n) {
        size_t j = 0;

        for (size_t i = 0; i < n; i++) {
                struct stat st;
                if (fstat(conns[i].fd, &st) == 0 && st.st_ino == conns[i].ino && st.st_dev == conns[i].dev)
                        conns[j++] = conns[i];
        }
        return j;
}

static void conns_prune(Api *a) {
        a->n_conns = conn_list_prune(a->conns, a->n_conns);
}

static unsigned count_conns(void *userdata) {
        Api *a = userdata;

        conns_prune(a);
        return a->n_conns;
}

static int on_connection(int fd, void *userdata) {
        _cleanup_close_ int cfd = fd;
        Api *a = userdata;
        struct ucred cred = {};
        socklen_t len = sizeof(cred);
        gid_t groups[256];
        socklen_t glen = sizeof(groups);
        ApiAccess access;
        struct stat st;
        Conn *n;

        if (a->shutting_down)
                return 0;
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        /* The supplementary groups too (a user in group hydra through /etc/group, not as primary group). More
         * than fit here: ERANGE, and the peer is judged on what fit, which can only deny, never grant more. */
        if (getsockopt(cfd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) < 0 && errno != ERANGE)
                glen = 0;
        access = authz_access(&a->authz, cred.uid, cred.gid, groups, glen / sizeof(gid_t));

        /* Remember the connection by fd and inode: at shutdown we cut off clients that stopped reading, and the
         * inode tells us the fd still is that connection (gRPC closes it without telling us). */
        conns_prune(a);
        n = realloc(a->conns, (a->n_conns + 1) * sizeof(*a->conns));
        if (!n)
                return -ENOMEM;
        a->conns = n;
        if (fstat(cfd, &st) < 0)
                return -errno;
        a->conns[a->n_conns++] = (Conn) { .fd = cfd, .ino = st.st_ino, .dev = st.st_dev, .uid = cred.uid,
                                          .pid = cred.pid, .access = access };
        grpc_server_add_channel_from_fd(a->server, TAKE_FD(cfd), a->creds);
        return 0;
}

/* activated_fd: the socket systemd passed (main.c checked it is a listening unix stream socket). It is systemd's
 * file: we neither bind nor remove it, and the lock still refuses a second hydrad started by hand. */
static int socket_take(Api *a, int activated_fd, HydraError *err) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        _cleanup_close_ int fd = activated_fd, probe = -EBADF;
        struct stat st;
        int r;

        if (strlen(a->socket_path) >= sizeof(sa.sun_path))
                return hydra_error_set(err, -ENAMETOOLONG, "socket path '%s' is too long", a->socket_path);
        strcpy(sa.sun_path, a->socket_path);

        /* The lock closes the race between two daemons starting at once; the probe tells a live daemon (that
         * holds no lock we know of, e.g. another version) from a stale socket file. */
        if (asprintf(&a->lock_path, "%s.lock", a->socket_path) < 0) {
                a->lock_path = NULL;
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        a->lock_fd = open(a->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (a->lock_fd < 0)
                return hydra_error_set(err, -errno, "open lock file '%s': %s", a->lock_path, strerror(errno));
        if (flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                if (errno == EWOULDBLOCK)
                        return hydra_error_set(err, -EADDRINUSE,
                                               "another hydrad is already serving '%s' (it holds '%s')",
                                               a->socket_path, a->lock_path);
                return hydra_error_set(err, -errno, "lock '%s': %s", a->lock_path, strerror(errno));
        }

        if (fd >= 0) {
                a->listen_fd = TAKE_FD(fd);
                a->activated = true;
                return 0;
        }

        probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe < 0)
                return hydra_error_set(err, -errno, "socket: %s", strerror(errno));
        if (connect(probe, (struct sockaddr *) &sa, sizeof(sa)) == 0)
                return hydra_error_set(err, -EADDRINUSE, "another process is already serving '%s'", a->socket_path);
        if (errno == ECONNREFUSED) {
                log_info("replacing stale socket '%s' left by a daemon that is gone", a->socket_path);
                if (unlink(a->socket_path) < 0 && errno != ENOENT)
                        return hydra_error_set(err, -errno, "remove stale socket '%s': %s", a->socket_path,
                                               strerror(errno));
        } else if (errno != ENOENT)
                return hydra_error_set(err, -errno, "probe '%s': %s", a->socket_path, strerror(errno));

        r = unix_listen("API socket", a->socket_path, a->config->socket_mode, a->socket_gid, &fd, &st, err);
        if (r < 0)
                return r;
        a->socket_dev = st.st_dev;
        a->socket_ino = st.st_ino;
        a->listen_fd = TAKE_FD(fd);
        return 0;
}

static void socket_release(Api *a) {
        struct stat st;

        a->listener = listener_free(a->listener);
        a->listen_fd = safe_close(a->listen_fd);
        /* Only if the file is still ours: a successor may have replaced it. */
        if (a->socket_ino && stat(a->socket_path, &st) == 0 && st.st_ino == a->socket_ino && st.st_dev == a->socket_dev)
                (void) unlink(a->socket_path);
        a->socket_ino = 0;
        a->lock_fd = safe_close(a->lock_fd);
}

/* --- the CRI socket while its VM's containerd cannot be reached --- */

/* The VM's CRI socket (vm_set_cri_fallback) hands us its connections while the guest is down. They go to a gRPC
 * server of their own, apart from the API's (a CRI client must not reach hydra.v1.Hydra through it), that has no
 * method: every call gets UNAVAILABLE with vm_cri_unavailable_reason() as the VM is at that moment, at once. A
 * connection is closed after CRI_FALLBACK_AGE_MS (GOAWAY, then the grace): a client that keeps its connection
 * (kubelet, crismux) comes back through the socket, and reaches the guest's containerd once the VM runs. */
#define CRI_FALLBACK_AGE_MS 5000
#define CRI_FALLBACK_AGE_GRACE_MS 1000

static void on_cri_call(Tag *t, bool ok);

static int cri_fallback_arm(CriFallback *f) {
        Api *a = f->api;
        grpc_call_error e;

        grpc_metadata_array_init(&f->metadata);
        grpc_call_details_init(&f->details);
        e = grpc_server_request_call(f->server, &f->call, &f->details, &f->metadata, a->cq, a->cq, &f->slot_tag);
        if (e != GRPC_CALL_OK) {
                grpc_metadata_array_destroy(&f->metadata);
                grpc_call_details_destroy(&f->details);
                log_error("gRPC: cannot request calls for the CRI socket of VM '%s': %d", role_to_string(f->role),
                          (int) e);
                return -EIO;
        }
        f->armed = true;
        return 0;
}

static void on_cri_call(Tag *t, bool ok) {
        CriFallback *f = (CriFallback *) ((char *) t - offsetof(CriFallback, slot_tag));
        Api *a = f->api;
        grpc_call *gc = TAKE_PTR(f->call);
        char reason[512];
        VmStatus st;
        Call *c;

        f->armed = false;
        grpc_metadata_array_destroy(&f->metadata);
        grpc_call_details_destroy(&f->details);
        if (!ok) {
                /* The server is shutting down; nothing arrived. */
                if (gc)
                        grpc_call_unref(gc);
                api_maybe_finish(a);
                return;
        }
        if (!a->shutting_down)
                (void) cri_fallback_arm(f);

        c = call_new(a, gc, NULL);
        if (!c)
                return;
        vm_get_status(manager_get_vm(a->manager, f->role), &st);
        vm_cri_unavailable_reason(&st, reason, sizeof(reason));
        log_debug("CRI socket of VM '%s': UNAVAILABLE: %s", role_to_string(f->role), reason);
        call_finish(c, GRPC_STATUS_UNAVAILABLE, reason, NULL);
        call_post_close(c);
        call_maybe_free(c);
}

static int cri_fallback_start(CriFallback *f) {
        Api *a = f->api;
        grpc_arg args[] = {
                {
                        .type = GRPC_ARG_INTEGER,
                        .key = (char *) GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                        .value.integer = (int) (a->config->api_idle_timeout_usec / 1000ULL),
                },
                {
                        .type = GRPC_ARG_INTEGER,
                        .key = (char *) GRPC_ARG_MAX_CONNECTION_AGE_MS,
                        .value.integer = CRI_FALLBACK_AGE_MS,
                },
                {
                        .type = GRPC_ARG_INTEGER,
                        .key = (char *) GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                        .value.integer = CRI_FALLBACK_AGE_GRACE_MS,
                },
        };
        grpc_channel_args channel_args = { .num_args = ELEMENTSOF(args), .args = args };
        int r;

        f->server = grpc_server_create(&channel_args, NULL);
        if (!f->server)
                return -ENOMEM;
        grpc_server_register_completion_queue(f->server, a->cq, NULL);
        grpc_server_start(f->server);
        r = cri_fallback_arm(f);
        if (r < 0) {
                /* Nothing is armed: it goes down at once. */
                grpc_server_shutdown_and_notify(f->server, a->cq, &f->shutdown_tag);
                f->shutdown_pending = true;
                grpc_server_cancel_all_calls(f->server);
        }
        return r;
}

/* ProxyFallback.serve: takes fd. */
static int cri_fallback_serve(int fd, void *userdata) {
        _cleanup_close_ int cfd = fd;
        CriFallback *f = userdata;
        Api *a = f->api;
        struct stat st;
        Conn *n;
        int r;

        if (a->shutting_down || f->shutdown_pending)
                return 0;
        if (!f->server) {
                r = cri_fallback_start(f);
                if (r < 0)
                        return r;
        }
        /* Its calls would wait unanswered until the client's deadline: an EOF now is the better answer. */
        if (!f->armed)
                return -EIO;
        f->n_conns = conn_list_prune(f->conns, f->n_conns);
        n = realloc(f->conns, (f->n_conns + 1) * sizeof(*f->conns));
        if (!n)
                return -ENOMEM;
        f->conns = n;
        if (fstat(cfd, &st) < 0)
                return -errno;
        f->conns[f->n_conns++] = (Conn) { .fd = cfd, .ino = st.st_ino, .dev = st.st_dev };
        grpc_server_add_channel_from_fd(f->server, TAKE_FD(cfd), a->creds);
        return 0;
}

/* ProxyFallback.count */
static unsigned cri_fallback_count(void *userdata) {
        CriFallback *f = userdata;

        f->n_conns = conn_list_prune(f->conns, f->n_conns);
        return (unsigned) f->n_conns;
}

static void on_cri_shutdown(Tag *t, bool ok) {
        CriFallback *f = (CriFallback *) ((char *) t - offsetof(CriFallback, shutdown_tag));

        f->shutdown_pending = false;
        api_maybe_finish(f->api);
}

static void cri_fallbacks_init(Api *a) {
        for (Role role = 0; role < _ROLE_MAX; role++) {
                CriFallback *f = &a->cri[role];

                *f = (CriFallback) {
                        .api = a,
                        .role = role,
                        .proxy = { .serve = cri_fallback_serve, .count = cri_fallback_count, .userdata = f },
                        .slot_tag.fn = on_cri_call,
                        .shutdown_tag.fn = on_cri_shutdown,
                };
        }
}

const ProxyFallback *api_cri_fallback(Api *a, Role role) {
        return (int) role >= 0 && role < _ROLE_MAX ? &a->cri[role].proxy : NULL;
}

/* Its calls are answered at once: once its requests are back, nothing of it waits. */
static bool cri_fallbacks_busy(Api *a) {
        for (Role role = 0; role < _ROLE_MAX; role++)
                if (a->cri[role].armed || a->cri[role].shutdown_pending)
                        return true;
        return false;
}

/* Cuts every connection (a client that stops reading holds its connection open). */
static void cri_fallbacks_cut(Api *a) {
        for (Role role = 0; role < _ROLE_MAX; role++) {
                CriFallback *f = &a->cri[role];

                f->n_conns = conn_list_prune(f->conns, f->n_conns);
                for (size_t i = 0; i < f->n_conns; i++)
                        (void) shutdown(f->conns[i].fd, SHUT_RDWR);
                f->n_conns = 0;
        }
}

static void cri_fallbacks_shutdown(Api *a) {
        for (Role role = 0; role < _ROLE_MAX; role++) {
                CriFallback *f = &a->cri[role];

                if (!f->server || f->shutdown_pending)
                        continue;
                f->shutdown_pending = true;
                grpc_server_shutdown_and_notify(f->server, a->cq, &f->shutdown_tag);
        }
        /* Its calls were answered at once: nothing on its connections is worth the grace period, and the
         * shutdown completes only once they are gone. */
        cri_fallbacks_cut(a);
}

/* Before the completion queue goes: as api_free() does with the API's server. */
static void cri_fallbacks_free(Api *a) {
        for (Role role = 0; role < _ROLE_MAX; role++) {
                CriFallback *f = &a->cri[role];

                if (f->server) {
                        if (!a->shutting_down && !f->shutdown_pending) {
                                grpc_server_shutdown_and_notify(f->server, a->cq, &f->shutdown_tag);
                                grpc_server_cancel_all_calls(f->server);
                        }
                        grpc_server_destroy(f->server);
                        f->server = NULL;
                }
                if (f->armed) {
                        /* Its tag never came back to the loop (start-up failure only). */
                        grpc_metadata_array_destroy(&f->metadata);
                        grpc_call_details_destroy(&f->details);
                        f->armed = false;
                }
                f->conns = mfree(f->conns);
                f->n_conns = 0;
        }
}

/* --- gRPC's own logging --- */

static void on_gpr_log(gpr_log_func_args *args) {
        int level = args->severity == GPR_LOG_SEVERITY_ERROR ? LOG_ERR
                  : args->severity == GPR_LOG_SEVERITY_INFO  ? LOG_INFO
                                                             : LOG_DEBUG;
        /* gRPC is chatty at info; keep it at debug unless it is an error. */
        if (level == LOG_INFO)
                level = LOG_DEBUG;
        log_full(level, "gRPC: %s (%s:%d)", args->message, args->file, args->line);
}

/* --- life cycle --- */

int api_new(sd_event *e, Manager *m, const HydraConfig *config, int activated_fd, Api **ret, HydraError *err) {
        _cleanup_close_ int afd = activated_fd;
        _cleanup_free_ char *name = NULL;
        Api *a;
        int r;

        a = calloc(1, sizeof(*a));
        if (!a)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        a->event = sd_event_ref(e);
        a->manager = m;
        a->config = config;
        a->wake_fd = a->listen_fd = a->lock_fd = -EBADF;
        pthread_mutex_init(&a->lock, NULL);
        a->shutdown_tag.fn = NULL;
        cri_fallbacks_init(a);

        a->socket_path = strdup(config->socket_path);
        if (!a->socket_path) {
                r = hydra_error_set(err, -ENOMEM, "out of memory");
                goto fail;
        }
        a->socket_gid = config->socket_gid; /* resolved once at start-up (config_finish) */
        a->authz = (AuthzPolicy) {
                .daemon_uid = geteuid(),
                .full_gid = config->socket_gid,
                .read_gid = config->readonly_gid,
                .full_group = config->socket_gid != (gid_t) -1 ? config->socket_group : NULL,
                .read_group = config->readonly_gid != (gid_t) -1 ? config->readonly_group : NULL,
        };

        r = socket_take(a, TAKE_FD(afd), err);
        if (r < 0)
                goto fail;

        gpr_set_log_function(on_gpr_log);
        /* gRPC's info and debug lines are noise to an operator; GRPC_VERBOSITY still turns them on. */
        if (!getenv("GRPC_VERBOSITY"))
                gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
        grpc_init();
        a->grpc_initialized = true;

        a->cq = grpc_completion_queue_create_for_next(NULL);
        /* A client that connects and then sits there holds an fd for ever: a connection without calls for
         * api_idle_timeout gets a GOAWAY and is closed (issue 9). The server's channel args reach the channels
         * made by grpc_server_add_channel_from_fd too: they are built from them, max-age filter included. */
        grpc_arg args[] = {
                {
                        .type = GRPC_ARG_INTEGER,
                        .key = (char *) GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                        /* at most 86400 s: config.c checks */
                        .value.integer = (int) (config->api_idle_timeout_usec / 1000ULL),
                },
        };
        grpc_channel_args channel_args = { .num_args = ELEMENTSOF(args), .args = args };
        a->server = grpc_server_create(&channel_args, NULL);
        grpc_server_register_completion_queue(a->server, a->cq, NULL);
        a->creds = grpc_insecure_server_credentials_create();

        a->n_slots = ELEMENTSOF(methods) + 1;
        a->slots = calloc(a->n_slots, sizeof(*a->slots));
        if (!a->slots) {
                r = hydra_error_set(err, -ENOMEM, "out of memory");
                goto fail;
        }
        for (size_t i = 0; i < a->n_slots; i++) {
                Slot *s = &a->slots[i];
                s->tag.fn = on_slot;
                s->api = a;
                if (i < ELEMENTSOF(methods)) {
                        s->method = &methods[i];
                        s->registered = grpc_server_register_method(a->server, methods[i].path, NULL,
                                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
                        if (!s->registered) {
                                r = hydra_error_set(err, -EIO, "gRPC: cannot register %s", methods[i].path);
                                goto fail;
                        }
                }
        }
        grpc_server_start(a->server);

        a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (a->wake_fd < 0) {
                r = hydra_error_set(err, -errno, "eventfd: %s", strerror(errno));
                goto fail;
        }
        r = sd_event_add_io(e, &a->wake_source, a->wake_fd, EPOLLIN, on_wake, a);
        if (r < 0) {
                hydra_error_set(err, r, "watch eventfd: %s", strerror(-r));
                goto fail;
        }
        (void) sd_event_source_set_description(a->wake_source, "grpc-wake");

        r = pthread_create(&a->thread, NULL, cq_thread, a);
        if (r != 0) {
                r = hydra_error_set(err, -r, "start the gRPC thread: %s", strerror(r));
                goto fail;
        }
        a->thread_started = true;

        for (size_t i = 0; i < a->n_slots; i++) {
                r = slot_arm(&a->slots[i]);
                if (r < 0) {
                        hydra_error_set(err, r, "gRPC: cannot wait for calls");
                        goto fail;
                }
        }

        if (asprintf(&name, "API socket '%s'", a->socket_path) < 0)
                name = NULL;
        r = listener_new(e, TAKE_FD(a->listen_fd), &(ListenerConfig) {
                                 .name = name ?: a->socket_path,
                                 .description = "api-listen",
                                 .max_connections = config->api_max_connections,
                                 .on_connection = on_connection,
                                 .count = count_conns,
                                 .userdata = a,
                         }, &a->listener);
        if (r < 0) {
                hydra_error_set(err, r, "watch '%s': %s", a->socket_path, strerror(-r));
                goto fail;
        }

        log_info("serving the API on '%s'%s", a->socket_path, a->activated ? " (passed by systemd)" : "");
        *ret = a;
        return 0;

fail:
        api_free(a);
        return r < 0 ? r : -EIO;
}

static int on_finish(sd_event_source *s, void *userdata) {
        Api *a = userdata;
        void (*done)(void *) = a->shutdown_done;

        a->finish_source = sd_event_source_disable_unref(a->finish_source);
        a->shutdown_done = NULL;
        if (done)
                done(a->shutdown_userdata);
        return 0;
}

/* Done once the shutdown tag is back, every armed request has returned and every call is freed. */
static void api_maybe_finish(Api *a) {
        if (!a->shutting_down || a->shutdown_tag_pending || a->slots_armed > 0 || a->calls || !a->shutdown_done ||
            a->finish_source || cri_fallbacks_busy(a))
                return;
        a->grace_timer = sd_event_source_disable_unref(a->grace_timer);
        /* Deferred: we may be inside a call's callback. */
        if (sd_event_add_defer(a->event, &a->finish_source, on_finish, a) < 0)
                on_finish(NULL, a);
}

static void on_shutdown_tag(Tag *t, bool ok) {
        Api *a = (Api *) ((char *) t - offsetof(Api, shutdown_tag));

        a->shutdown_tag_pending = false;
        api_maybe_finish(a);
}

static int on_grace(sd_event_source *s, uint64_t usec, void *userdata) {
        Api *a = userdata;

        a->grace_timer = sd_event_source_disable_unref(a->grace_timer);
        log_info("cancelling the API calls still open after %llu s", (unsigned long long) (SHUTDOWN_GRACE_USEC / 1000000ULL));
        for (Call *c = a->calls; c; c = c->next)
                if (c->op || c->start_op)
                        call_fail(c, -ESHUTDOWN, "hydrad is shutting down");
        grpc_server_cancel_all_calls(a->server);
        /* A client that stopped reading would hold a send forever: cut its connection. */
        conns_prune(a);
        for (size_t i = 0; i < a->n_conns; i++)
                (void) shutdown(a->conns[i].fd, SHUT_RDWR);
        a->n_conns = 0;
        return 0;
}

void api_shutdown(Api *a, void (*done)(void *userdata), void *userdata) {
        a->shutdown_done = done;
        a->shutdown_userdata = userdata;
        if (a->shutting_down) {
                api_maybe_finish(a);
                return;
        }
        a->shutting_down = true;
        log_info("API shutting down: no new calls");
        socket_release(a);

        a->shutdown_tag.fn = on_shutdown_tag;
        a->shutdown_tag_pending = true;
        grpc_server_shutdown_and_notify(a->server, a->cq, &a->shutdown_tag);
        cri_fallbacks_shutdown(a);

        for (Call *c = a->calls; c; c = c->next)
                if (c->method && c->method->streaming && !c->status_sent)
                        stream_end(c, GRPC_STATUS_UNAVAILABLE, "hydrad is shutting down");

        if (sd_event_add_time_relative(a->event, &a->grace_timer, CLOCK_MONOTONIC, SHUTDOWN_GRACE_USEC, 0, on_grace,
                                       a) >= 0)
                (void) sd_event_source_set_description(a->grace_timer, "api-grace");
        api_maybe_finish(a);
}

Api *api_free(Api *a) {
        if (!a)
                return NULL;

        socket_release(a);
        a->grace_timer = sd_event_source_disable_unref(a->grace_timer);
        a->finish_source = sd_event_source_disable_unref(a->finish_source);

        if (a->server) {
                if (!a->shutting_down) {
                        /* Not shut down through api_shutdown (start-up failed): drain synchronously. */
                        grpc_server_shutdown_and_notify(a->server, a->cq, &a->shutdown_tag);
                        grpc_server_cancel_all_calls(a->server);
                }
                grpc_server_destroy(a->server);
        }
        cri_fallbacks_free(a);
        if (a->cq) {
                grpc_completion_queue_shutdown(a->cq);
                if (a->thread_started)
                        pthread_join(a->thread, NULL);
                else
                        while (grpc_completion_queue_next(a->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
                               GRPC_QUEUE_SHUTDOWN)
                                ;
                grpc_completion_queue_destroy(a->cq);
        }
        /* Calls left over (start-up failure only) are gone with the server. */
        while (a->calls) {
                Call *c = a->calls;
                a->calls = c->next;
                call_drop_waits(c);
                if (c->send_buf)
                        grpc_byte_buffer_destroy(c->send_buf);
                grpc_call_unref(c->call);
                free(c);
        }
        for (size_t i = 0; a->slots && i < a->n_slots; i++) {
                if (a->slots[i].payload)
                        grpc_byte_buffer_destroy(a->slots[i].payload);
        }
        free(a->slots);
        if (a->event_buf)
                grpc_byte_buffer_destroy(a->event_buf);
        if (a->creds)
                grpc_server_credentials_release(a->creds);
        if (a->grpc_initialized)
                grpc_shutdown_blocking();

        a->wake_source = sd_event_source_disable_unref(a->wake_source);
        safe_close(a->wake_fd);
        free(a->conns);
        free(a->socket_path);
        free(a->lock_path);
        pthread_mutex_destroy(&a->lock);
        sd_event_unref(a->event);
        free(a);
        return NULL;
}
