/* SPDX-License-Identifier: MIT */
/* GetVm latency under concurrency: N client threads, each with its own channel (connection) to hydrad, each
 * making M calls, back to back (RATE 0: saturation, where latency is queueing behind the 2 cores) or paced at
 * RATE calls per second per client (a client that waits for its reply before the next tick). Prints one JSON
 * object: p50, p99, max in microseconds and calls per second. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hydra/v1/hydra.pb-c.h"
#include "grpc_status.h"
#include "rpc.h"

#define WARMUP_CALLS 50

typedef struct Worker {
        const char *socket;
        int calls;
        double rate;       /* calls per second, 0: back to back */
        uint64_t *samples; /* nanoseconds */
        int failures;
        pthread_barrier_t *barrier;
} Worker;

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static int get_vm(RpcClient *c) {
        Hydra__V1__GetVmRequest req = HYDRA__V1__GET_VM_REQUEST__INIT;
        ProtobufCMessage *reply = NULL;
        RpcStatus status;

        req.role = HYDRA__V1__ROLE__ROLE_ISOLATED;
        if (rpc_call_unary(c, "/hydra.v1.Hydra/GetVm", &req.base, &hydra__v1__vm__descriptor, 10000, &reply,
                           &status) < 0) {
                fprintf(stderr, "bench_rpc: GetVm: %s: %s\n", grpc_status_name(status.code), status.message);
                return -1;
        }
        protobuf_c_message_free_unpacked(reply, NULL);
        return 0;
}

static void *worker(void *userdata) {
        Worker *w = userdata;
        RpcClient *c = rpc_client_new(w->socket);

        for (int i = 0; i < WARMUP_CALLS; i++)
                if (get_vm(c) < 0)
                        w->failures++;
        pthread_barrier_wait(w->barrier);
        uint64_t period = w->rate > 0 ? (uint64_t) (1e9 / w->rate) : 0, next = now_ns();
        for (int i = 0; i < w->calls; i++) {
                if (period) {
                        /* Spread the clients' ticks over the period instead of firing them all at once. */
                        if (i == 0)
                                next += (uint64_t) (rand_r(&(unsigned) { (unsigned) (uintptr_t) w }) % period);
                        uint64_t now = now_ns();
                        if (next > now) {
                                struct timespec ts = { .tv_sec = (time_t) ((next - now) / 1000000000ULL),
                                                       .tv_nsec = (long) ((next - now) % 1000000000ULL) };
                                nanosleep(&ts, NULL);
                        }
                        next += period;
                }
                uint64_t t0 = now_ns();
                if (get_vm(c) < 0)
                        w->failures++;
                w->samples[i] = now_ns() - t0;
        }
        rpc_client_free(c);
        return NULL;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

int main(int argc, char *argv[]) {
        pthread_barrier_t barrier;
        int threads, calls, failures = 0;
        uint64_t *all, t0, elapsed;
        Worker *w;
        pthread_t *tid;
        size_t n;

        double rate;

        if (argc != 4 && argc != 5) {
                fprintf(stderr, "usage: bench_rpc SOCKET THREADS CALLS_PER_THREAD [RATE_PER_THREAD]\n");
                return 2;
        }
        threads = atoi(argv[2]);
        calls = atoi(argv[3]);
        rate = argc == 5 ? atof(argv[4]) : 0;
        if (threads < 1 || calls < 1)
                return 2;

        n = (size_t) threads * (size_t) calls;
        all = calloc(n, sizeof(*all));
        w = calloc((size_t) threads, sizeof(*w));
        tid = calloc((size_t) threads, sizeof(*tid));
        pthread_barrier_init(&barrier, NULL, (unsigned) threads + 1);
        for (int i = 0; i < threads; i++) {
                w[i] = (Worker) { .socket = argv[1], .calls = calls, .rate = rate, .samples = all + (size_t) i * (size_t) calls,
                                  .barrier = &barrier };
                pthread_create(&tid[i], NULL, worker, &w[i]);
        }
        pthread_barrier_wait(&barrier);
        t0 = now_ns();
        for (int i = 0; i < threads; i++) {
                pthread_join(tid[i], NULL);
                failures += w[i].failures;
        }
        elapsed = now_ns() - t0;

        qsort(all, n, sizeof(*all), cmp_u64);
        printf("{\"threads\": %d, \"rate_per_client\": %.0f, \"calls\": %zu, \"failures\": %d, \"p50_us\": %.1f, \"p99_us\": %.1f, "
               "\"max_us\": %.1f, \"calls_per_s\": %.0f}\n",
               threads, rate, n, failures, all[n / 2] / 1000.0, all[(n * 99) / 100] / 1000.0, all[n - 1] / 1000.0,
               (double) n / ((double) elapsed / 1e9));
        pthread_barrier_destroy(&barrier);
        free(all);
        free(w);
        free(tid);
        return failures ? 1 : 0;
}
