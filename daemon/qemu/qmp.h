/* SPDX-License-Identifier: MIT */
#pragma once

/* daemon/qemu: QEMU itself, knowing no Vm: the QMP client (this file), the argv a spec means (qemu_argv.h) and the
 * serial console relay (console.h). It sees base/ only. What hydrad says to QEMU, and how, belongs here; when to
 * say it belongs to core/. */

#include <jansson.h>
#include <stdint.h>
#include <systemd/sd-event.h>

/* An asynchronous QMP client on sd-event. It knows no Vm: it reports through a callback table, the way libvirt's
 * qemu_monitor_json.c emits events that qemu_process.c handles.
 *
 * Life of a client: qmp_client_new() takes a connected stream socket, waits for QEMU's greeting, sends
 * qmp_capabilities, then calls on_ready. Commands may be queued with qmp_invoke() at any time after
 * qmp_client_new(); they are sent once the handshake is done. Every command has a timeout; a command that times
 * out gets -ETIMEDOUT and its late reply, if any, is dropped. On EOF, a read/write error, an oversized message
 * (-EMSGSIZE), a refused qmp_capabilities (-EPROTO), or a handshake timeout, every pending command gets
 * -ECONNRESET (the handshake timeout: -ETIMEDOUT to on_disconnect) and on_disconnect is called once with the
 * reason. A line that is not JSON, or JSON of an unknown shape, is dropped (debug log), not fatal. After
 * on_disconnect the client does nothing more; the owner frees it.
 *
 * qmp_client_free() may be called from inside any callback (the client pins itself while dispatching).
 * Pending commands of a freed client get -ECANCELED. */

typedef struct QmpClient QmpClient;

/* result: the "return" member (borrowed, valid during the call) on success, NULL on error.
 * error: 0; -EIO with desc = QEMU's error "desc" when QEMU answered with an error; -ETIMEDOUT;
 * -ECONNRESET; -ECANCELED. */
typedef void (*qmp_reply_handler_t)(QmpClient *q, json_t *result, int error, const char *desc, void *userdata);

typedef struct QmpCallbacks {
        void (*on_ready)(QmpClient *q, void *userdata);
        /* name: "SHUTDOWN", ...; data: the event's "data" member or NULL (borrowed). */
        void (*on_event)(QmpClient *q, const char *name, json_t *data, void *userdata);
        void (*on_disconnect)(QmpClient *q, int error, void *userdata);
} QmpCallbacks;

#define QMP_DEFAULT_TIMEOUT_USEC (5ULL * 1000000ULL)
#define QMP_MAX_MESSAGE_SIZE (1024U * 1024U)

/* Takes ownership of fd (a connected SOCK_STREAM socket; made non-blocking here) in every case. name is used in
 * debug transcripts ("QMP 'isolated' <- {...}"). handshake_timeout_usec bounds greeting + qmp_capabilities.
 * Returns 0 or a negative errno. */
int qmp_client_new(sd_event *e, int fd, const char *name, uint64_t handshake_timeout_usec,
                   const QmpCallbacks *callbacks, void *userdata, QmpClient **ret);

/* Sends {"execute": command, "arguments": args, "id": N}. args may be NULL; a reference is taken. handler may
 * be NULL (fire and forget, still timed out). timeout_usec 0 means QMP_DEFAULT_TIMEOUT_USEC (so does a
 * handshake_timeout_usec of 0); the timer starts now, even while the handshake runs. Returns 0, or -ENOTCONN
 * after disconnect, or -ENOMEM (-EINVAL if args is not an object). */
int qmp_invoke(QmpClient *q, const char *command, json_t *args, uint64_t timeout_usec, qmp_reply_handler_t handler,
               void *userdata);

/* True once on_ready has been called and until disconnect. */
int qmp_client_is_ready(QmpClient *q);

QmpClient *qmp_client_free(QmpClient *q);
