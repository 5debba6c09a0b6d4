/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "child.h"
#include "log.h"
#include "macro.h"
#include "provision.h"
#include "store.h"
#include "unpack.h"
#include "url.h"
#include "worker.h"

#define GIB (UINT64_C(1024) * 1024 * 1024)
#define MIB (UINT64_C(1024) * 1024)

typedef enum Step {
        STEP_IMAGE_FETCH,
        STEP_IMAGE_UNPACK,
        STEP_ARTIFACT_FETCH,
        STEP_ARTIFACT_UNPACK,
        STEP_LOCATE,
        STEP_SEED,
        STEP_DISK,
        STEP_GROW,
        STEP_FIRMWARE,
        STEP_SHMEM,
        STEP_DONE,
} Step;

/* The small records a preparation keeps (image.source, artifact.source, the cloud-init files, seed.digest,
 * disk.identity) are fsync'd: written in order on a worker thread, not on the loop (issue 10). The step that
 * follows starts from the job's completion, so a record is durable before the step it records. */
#define RECORDS_MAX 1U /* one per step today */

typedef struct Record {
        char *dir, *name, *data;
        mode_t mode;
} Record;

typedef struct RecordJob {
        Record records[RECORDS_MAX];
        size_t n;
        HydraError error;          /* the job's own: the loop reads it after the thread is done */
        Provision *provision;      /* borrowed; for the loop side only */
} RecordJob;

typedef struct SeedJob SeedJob;

struct Provision {
        ProvisionContext ctx;      /* strings owned below */
        char *name, *state_dir, *cache_dir;
        VmSpec spec;
        BootMode mode;
        ProvisionCallbacks cb;
        void *userdata;

        unsigned planned;          /* provision_steps() without facts: what the spec asks for */
        Step step;
        Fetch *fetch;
        Unpack *unpack;
        Child *child;
        Worker *worker;            /* writing the records below, or preparing the seed's files */
        RecordJob *records;
        SeedJob *seed_job;
        void (*after_records)(Provision *p);
        sd_event_source *defer;

        char *image_base;          /* the base the disk is made from */
        const char *base_format;
        char *base_identity;       /* sha256 of the downloaded file it came from (+ rootfs name) */
        char *artifact_dir;        /* STATE/artifact */
        char *artifact_digest;
        char *seed_digest;         /* of the rendered cloud-init files; NULL without a seed */
        char *progress_what;       /* owned copy for progress events */

        ProvisionOutput out;
};

static void step_next(Provision *p);

static RecordJob *record_job_free(RecordJob *j) {
        if (!j)
                return NULL;
        for (size_t i = 0; i < j->n; i++) {
                free(j->records[i].dir);
                free(j->records[i].name);
                free(j->records[i].data);
        }
        free(j);
        return NULL;
}

const char *provision_debian_arch(Arch arch) {
        return arch == ARCH_AARCH64 ? "arm64" : "amd64";
}

void provision_output_done(ProvisionOutput *o) {
        if (!o)
                return;
        free(o->disk_path);
        free(o->seed_path);
        free(o->kernel);
        free(o->initrd);
        free(o->firmware_vars);
        free(o->shmem_path);
        *o = (ProvisionOutput) {};
}

static Provision *provision_free(Provision *p) {
        if (!p)
                return NULL;
        if (p->fetch)
                fetch_cancel(p->fetch);
        if (p->unpack)
                unpack_cancel(p->unpack);
        if (p->child)
                child_cancel(p->child);
        worker_cancel(p->worker);  /* waits for the record being written */
        record_job_free(p->records);
        free(p->seed_job);
        sd_event_source_disable_unref(p->defer);
        vm_spec_done(&p->spec);
        provision_output_done(&p->out);
        free(p->image_base);
        free(p->base_identity);
        free(p->artifact_dir);
        free(p->artifact_digest);
        free(p->seed_digest);
        free(p->progress_what);
        free(p->name);
        free(p->state_dir);
        free(p->cache_dir);
        free(p);
        return NULL;
}

void provision_cancel(Provision *p) {
        if (p)
                log_vm_info(p->name, "VM '%s': preparation cancelled", p->name);
        provision_free(p);
}

static void provision_fail(Provision *p, const HydraError *err) {
        p->cb.done(err->code < 0 ? err->code : -EIO, err, NULL, p->userdata);
        provision_free(p);
}

static void provision_succeed(Provision *p) {
        ProvisionOutput out = p->out;

        p->out = (ProvisionOutput) {};
        p->cb.done(0, NULL, &out, p->userdata);
        provision_output_done(&out);
        provision_free(p);
}

static void emit_progress(Provision *p, const char *step, const char *what, uint64_t bytes, uint64_t total,
                          uint64_t rate) {
        if (!p->cb.progress)
                return;
        p->cb.progress(&(ProvisionProgress) { .step = step, .what = what, .bytes = bytes, .total = total,
                                              .rate = rate },
                       p->userdata);
}

static void emit_notice(Provision *p, const char *fmt, ...) _printf_(2, 3);
static void emit_notice(Provision *p, const char *fmt, ...) {
        _cleanup_free_ char *msg = NULL;
        va_list ap;
        int r;

        va_start(ap, fmt);
        r = vasprintf(&msg, fmt, ap);
        va_end(ap);
        if (r < 0)
                return;
        log_vm_info(p->name, "VM '%s': %s", p->name, msg);
        if (p->cb.notice)
                p->cb.notice(msg, p->userdata);
}

static char *path_join(const char *a, const char *b) {
        char *s;

        return asprintf(&s, "%s/%s", a, b) < 0 ? NULL : s;
}

/* Queues dir/name = data for records_write(). Returns 0 or -ENOMEM (err). */
static int record_add(Provision *p, const char *dir, const char *name, const char *data, mode_t mode,
                      HydraError *err) {
        Record *rec;

        if (!p->records) {
                p->records = calloc(1, sizeof(*p->records));
                if (!p->records)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        assert(p->records->n < RECORDS_MAX);
        rec = &p->records->records[p->records->n];
        *rec = (Record) { .dir = strdup(dir), .name = strdup(name), .data = strdup(data), .mode = mode };
        p->records->n++;
        if (!rec->dir || !rec->name || !rec->data)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return 0;
}

/* On the worker thread: touches nothing but the job. */
static int records_run(Worker *w, void *userdata) {
        RecordJob *j = userdata;
        int r;

        for (size_t i = 0; i < j->n; i++) {
                if (worker_cancelled(w))
                        return -ECANCELED;
                r = store_write_atomic(j->records[i].dir, j->records[i].name, j->records[i].data,
                                       strlen(j->records[i].data), j->records[i].mode, &j->error);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void on_records_written(Worker *w, int r, void *userdata) {
        RecordJob *j = userdata;
        Provision *p = j->provision;
        HydraError e = j->error;

        p->worker = NULL;
        p->records = record_job_free(p->records);
        if (r < 0)
                return provision_fail(p, &e);
        p->after_records(p);
}

/* Writes the queued records on a worker; after(p) runs on the loop once they are all durable. Returns 0, or
 * -errno with err set. */
static int records_write(Provision *p, void (*after)(Provision *p), HydraError *err) {
        int r;

        assert(p->records && !p->worker);
        hydra_error_clear(&p->records->error);
        p->records->provision = p;
        p->after_records = after;
        r = worker_start(p->ctx.event, "provision-records", records_run, NULL, on_records_written, p->records,
                         &p->worker);
        if (r < 0)
                return hydra_error_set(err, r, "start a thread to write the preparation's records: %s",
                                       strerror(-r));
        return 0;
}

/* The same from a completion callback: a failure ends the preparation. */
static void records_write_or_fail(Provision *p, void (*after)(Provision *p)) {
        HydraError e;

        hydra_error_clear(&e);
        if (records_write(p, after, &e) < 0)
                provision_fail(p, &e);
}

static int sha256_hex(const void *data, size_t size, char ret[static 65]) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned n = 0;

        if (!EVP_Digest(data, size, md, &n, EVP_sha256(), NULL) || n != 32)
                return -EIO;
        for (unsigned i = 0; i < n; i++)
                sprintf(ret + 2 * i, "%02x", md[i]);
        return 0;
}

/* --- which steps run (pure) --- */

int provision_disk_identity(const char *base_identity, const char *seed_digest, bool keep_pristine,
                            char ret[static 65]) {
        _cleanup_free_ char *s = NULL;

        if (asprintf(&s, "base=%s\nseed=%s\npristine=%d\n", strempty(base_identity), strempty(seed_digest),
                     keep_pristine) < 0) {
                s = NULL;
                return -ENOMEM;
        }
        return sha256_hex(s, strlen(s), ret);
}

/* Made from exactly this, and still there. */
static bool made_from(const char *recorded, const char *now, bool exists) {
        return recorded && now && streq(recorded, now) && exists;
}

int provision_steps(const VmSpec *spec, const ProvisionFacts *f, unsigned *ret) {
        BootMode mode = vm_spec_boot_mode(spec);
        unsigned steps = 0;

        if (mode == BOOT_CLOUD_IMAGE) {
                steps |= PROVISION_STEP_FETCH_IMAGE;
                if (f->image_packed && !made_from(f->image_unpacked_from, f->image_digest, f->image_unpacked))
                        steps |= PROVISION_STEP_UNPACK_IMAGE;
        }
        /* A cloud image may come with an artifact too: the encrypted-container tools are in it. */
        if (!isempty(spec->bare.artifact.url)) {
                steps |= PROVISION_STEP_FETCH_ARTIFACT | PROVISION_STEP_LOCATE;
                if (!made_from(f->artifact_unpacked_from, f->artifact_digest, f->artifact_unpacked))
                        steps |= PROVISION_STEP_UNPACK_ARTIFACT;
        }
        if (mode == BOOT_CLOUD_IMAGE && !made_from(f->seed_built_from, f->seed_digest, f->seed_built))
                steps |= PROVISION_STEP_BUILD_SEED;
        if (mode != BOOT_LOCAL) {
                char identity[65];
                int r;

                if (!f->disk_exists)
                        steps |= PROVISION_STEP_MAKE_DISK;
                else {
                        r = provision_disk_identity(f->base_identity, f->seed_digest, spec->keep_pristine, identity);
                        if (r < 0)
                                return r;
                        if (made_from(f->disk_made_from, identity, true))
                                ;
                        else if (spec->reuse_disk_on_change)
                                steps |= PROVISION_STEP_KEEP_DISK;
                        else
                                steps |= PROVISION_STEP_RESET_DISK | PROVISION_STEP_MAKE_DISK;
                }
                /* Never shrunk; a size not known yet is asked of qemu-img, which tells. */
                if (spec->disk_size_gib > 0 && f->disk_size < (uint64_t) spec->disk_size_gib * GIB)
                        steps |= PROVISION_STEP_GROW_DISK;
        }
        if (spec->firmware_vars && !f->firmware_vars_copied)
                steps |= PROVISION_STEP_COPY_FIRMWARE_VARS;
        if (spec->shares.kubelet == KUBELET_SHARES_VIRTIO || spec->shares.n_extra > 0)
                steps |= PROVISION_STEP_SHARES;
        if (spec->devices.shmem != SHMEM_NONE)
                steps |= PROVISION_STEP_SHMEM;
        *ret = steps;
        return 0;
}

/* Whether step must run, given the facts known now: 1, 0, or -ENOMEM. */
static int must_run(const Provision *p, const ProvisionFacts *f, ProvisionStep step) {
        unsigned steps;
        int r;

        r = provision_steps(&p->spec, f, &steps);
        if (r < 0)
                return r;
        return !!(steps & step);
}

/* What a file starts with decides whether it must be unpacked: compressed streams and archives must, an image
 * (qcow2 or anything else) is used where it lies. */
static bool looks_packed(const char *path) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        unsigned char b[512];
        ssize_t n;

        if (fd < 0)
                return false;
        n = pread(fd, b, sizeof(b), 0);
        if (n < 6)
                return false;
        if (b[0] == 0x1f && b[1] == 0x8b)                        /* gzip */
                return true;
        if (memcmp(b, "\xfd" "7zXZ\0", 6) == 0)                   /* xz */
                return true;
        if (memcmp(b, "BZh", 3) == 0)                            /* bzip2 */
                return true;
        if (memcmp(b, "PK\x03\x04", 4) == 0)                     /* zip */
                return true;
        if (n >= 262 && memcmp(b + 257, "ustar", 5) == 0)        /* tar */
                return true;
        return false;
}

static char *read_small(const char *dir, const char *name) {
        void *data = NULL;
        size_t size;

        if (store_read(dir, name, 4096, &data, &size, NULL) < 0)
                return NULL;
        return data;
}

/* --- the cloud image --- */

static void on_fetch_progress(Fetch *f, const FetchProgress *fp, void *userdata) {
        Provision *p = userdata;

        emit_progress(p, "download", p->progress_what, fp->bytes, fp->total, fp->rate);
}

static int set_progress_what(Provision *p, const char *url) {
        free(p->progress_what);
        p->progress_what = url_display(url);
        return p->progress_what ? 0 : -ENOMEM;
}

static void after_image_source(Provision *p) {
        p->base_format = disk_format_probe(p->image_base);
        p->step = STEP_ARTIFACT_FETCH;
        step_next(p);
}

static void on_image_unpacked(Unpack *u, int r, const HydraError *err, void *userdata) {
        Provision *p = userdata;
        _cleanup_free_ char *entry = NULL;
        HydraError e;

        p->unpack = NULL;
        if (r < 0) {
                hydra_error_clear(&e);
                (void) hydra_error_set(&e, r, "unpack %s: %s", p->progress_what, err ? err->message : strerror(-r));
                return provision_fail(p, &e);
        }
        /* Remember which download it came from, so that a new download is unpacked again. */
        entry = fetch_cache_entry(p->cache_dir, p->spec.image.url);
        hydra_error_clear(&e);
        if (!entry)
                return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });
        r = record_add(p, entry, "image.source", p->base_identity, 0600, &e);
        if (r < 0)
                return provision_fail(p, &e);
        records_write_or_fail(p, after_image_source);
}

static void on_unpack_progress(Unpack *u, uint64_t in_bytes, uint64_t in_total, void *userdata) {
        Provision *p = userdata;

        emit_progress(p, "unpack", p->progress_what, in_bytes, in_total, 0);
}

static void on_image_fetched(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata) {
        Provision *p = userdata;
        _cleanup_free_ char *entry = NULL, *unpacked = NULL, *source = NULL;
        bool packed;
        HydraError e;

        p->fetch = NULL;
        if (r < 0)
                return provision_fail(p, err);
        if (res->notice)
                emit_notice(p, "%s", res->notice);

        free(p->base_identity);
        p->base_identity = strdup(res->sha256);
        if (!p->base_identity)
                return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });

        packed = looks_packed(res->path);
        if (packed) {
                entry = fetch_cache_entry(p->cache_dir, p->spec.image.url);
                unpacked = entry ? path_join(entry, "image") : NULL;
                if (!unpacked)
                        return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });
                source = read_small(entry, "image.source");
        }
        r = must_run(p, &(ProvisionFacts) { .image_digest = p->base_identity, .image_packed = packed,
                                            .image_unpacked_from = source,
                                            .image_unpacked = unpacked && access(unpacked, F_OK) == 0 },
                     PROVISION_STEP_UNPACK_IMAGE);
        if (r < 0)
                return provision_fail(p, &(HydraError) { .code = r, .message = "out of memory" });
        if (r == 0) {
                /* An image used where it lies, or one unpacked from this very download before. */
                p->image_base = packed ? TAKE_PTR(unpacked) : strdup(res->path);
                if (!p->image_base)
                        return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });
                if (packed)
                        log_vm_debug(p->name, "VM '%s': %s already unpacked", p->name, p->image_base);
                p->base_format = disk_format_probe(p->image_base);
                p->step = STEP_ARTIFACT_FETCH;
                return step_next(p);
        }
        p->image_base = TAKE_PTR(unpacked);

        hydra_error_clear(&e);
        (void) store_remove(entry, "image.source");
        p->step = STEP_IMAGE_UNPACK;
        r = unpack_image(p->ctx.event, res->path, p->progress_what, p->image_base, on_unpack_progress,
                         on_image_unpacked, p, &p->unpack, &e);
        if (r < 0)
                return provision_fail(p, &e);
}

static int start_fetch(Provision *p, const Source *src, fetch_done_t done, HydraError *err) {
        FetchRequest req = {
                .url = src->url,
                .user = src->user,
                .password = src->password,
                .token = src->token,
                .token_header = src->token_header,
                .checksum = src->checksum,
                .sums_url = src->sums_url,
                .cache_dir = p->cache_dir,
        };

        if (set_progress_what(p, src->url) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return fetch_start(p->ctx.fetcher, &req, on_fetch_progress, done, p, &p->fetch, err);
}

/* --- the bare-kernel artifact --- */

static void after_artifact_source(Provision *p) {
        p->step = STEP_LOCATE;
        step_next(p);
}

static void on_artifact_unpacked(Unpack *u, int r, const HydraError *err, void *userdata) {
        Provision *p = userdata;
        HydraError e;

        p->unpack = NULL;
        hydra_error_clear(&e);
        if (r < 0) {
                (void) hydra_error_set(&e, r, "unpack %s: %s", p->progress_what, err ? err->message : strerror(-r));
                return provision_fail(p, &e);
        }
        r = record_add(p, p->state_dir, "artifact.source", p->artifact_digest, 0644, &e);
        if (r < 0)
                return provision_fail(p, &e);
        records_write_or_fail(p, after_artifact_source);
}

static void on_artifact_fetched(Fetch *f, int r, const FetchResult *res, const HydraError *err, void *userdata) {
        Provision *p = userdata;
        _cleanup_free_ char *source = NULL;
        HydraError e;

        p->fetch = NULL;
        if (r < 0)
                return provision_fail(p, err);
        if (res->notice)
                emit_notice(p, "%s", res->notice);

        free(p->artifact_digest);
        p->artifact_digest = strdup(res->sha256);
        if (!p->artifact_digest)
                return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });

        source = read_small(p->state_dir, "artifact.source");
        r = must_run(p, &(ProvisionFacts) { .artifact_digest = p->artifact_digest, .artifact_unpacked_from = source,
                                            .artifact_unpacked = access(p->artifact_dir, F_OK) == 0 },
                     PROVISION_STEP_UNPACK_ARTIFACT);
        if (r < 0)
                return provision_fail(p, &(HydraError) { .code = r, .message = "out of memory" });
        if (r == 0) {
                p->step = STEP_LOCATE;
                return step_next(p);
        }

        hydra_error_clear(&e);
        (void) store_remove(p->state_dir, "artifact.source");
        p->step = STEP_ARTIFACT_UNPACK;
        r = unpack_tree(p->ctx.event, res->path, p->progress_what, p->artifact_dir, on_unpack_progress,
                        on_artifact_unpacked, p, &p->unpack, &e);
        if (r < 0)
                return provision_fail(p, &e);
}

static bool is_file(const char *path) {
        struct stat st;

        return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The first of candidates that is a regular file, or -ENOENT. tried collects "'PATH', " for the message. */
static int find_first(char *const *candidates, size_t n, char **ret, FILE *tried) {
        for (size_t c = 0; c < n; c++) {
                if (!candidates[c])
                        continue;
                if (is_file(candidates[c])) {
                        *ret = strdup(candidates[c]);
                        return *ret ? 0 : -ENOMEM;
                }
                if (tried)
                        (void) fprintf(tried, "%s'%s'", ftell(tried) > 0 ? ", " : "", candidates[c]);
        }
        return -ENOENT;
}

/* start-vm.sh's search, one file at a time: the top of the artifact, then bare.dir; the kernel under its versioned
 * name, then (with a version) the plain one, in each place. The first place is also what a plan shows for a
 * file not there yet. */
static int locate_one(const char *what, const char *artifact_dir, const char *sub, const char *name,
                      const char *version, bool must_exist, char **ret, HydraError *err) {
        _cleanup_free_ char *versioned = NULL, *tried = NULL;
        char *c[4] = {};
        size_t tried_size = 0;
        FILE *f = NULL;
        int r;

        if (asprintf(&versioned, "%s%s", name, strempty(version)) < 0) {
                versioned = NULL;
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        c[0] = path_join(artifact_dir, versioned);
        c[1] = isempty(version) ? NULL : path_join(artifact_dir, name);
        c[2] = sub ? path_join(sub, versioned) : NULL;
        c[3] = sub && !isempty(version) ? path_join(sub, name) : NULL;
        if (!c[0] || (!isempty(version) && !c[1]) || (sub && !c[2]) || (sub && !isempty(version) && !c[3])) {
                r = hydra_error_set(err, -ENOMEM, "out of memory");
                goto finish;
        }
        if (must_exist) {
                f = open_memstream(&tried, &tried_size);
                if (!f) {
                        r = hydra_error_set(err, -ENOMEM, "out of memory");
                        goto finish;
                }
        }
        r = find_first(c, ELEMENTSOF(c), ret, f);
        if (f && fclose(f) != 0 && r == -ENOENT)
                tried = mfree(tried);
        if (r == -ENOMEM)
                r = hydra_error_set(err, -ENOMEM, "out of memory");
        else if (r == -ENOENT && must_exist)
                r = hydra_error_set(err, -ENOENT, "bare-kernel artifact: %s not found; tried %s", what,
                                    strempty(tried));
        else if (r == -ENOENT) {
                *ret = TAKE_PTR(c[0]);
                r = 0;
        }
finish:
        for (size_t i = 0; i < ELEMENTSOF(c); i++)
                free(c[i]);
        return r;
}

int provision_locate_bare(const VmSpec *spec, const char *artifact_dir, bool must_exist, char **ret_kernel,
                          char **ret_initrd, char **ret_rootfs, HydraError *err) {
        _cleanup_free_ char *sub = NULL, *k = NULL, *i = NULL, *r = NULL;
        const char *kernel = spec->bare.kernel ? spec->bare.kernel : SPEC_DEFAULT_BARE_KERNEL;
        const char *initrd = spec->bare.initrd ? spec->bare.initrd : SPEC_DEFAULT_BARE_INITRD;
        const char *rootfs = spec->bare.rootfs ? spec->bare.rootfs : SPEC_DEFAULT_BARE_ROOTFS;
        int q;

        if (spec->bare.dir) {
                sub = path_join(artifact_dir, spec->bare.dir);
                if (!sub)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        q = locate_one("kernel", artifact_dir, sub, kernel, spec->bare.kernel_version, must_exist, &k, err);
        if (q < 0)
                return q;
        q = locate_one("initrd", artifact_dir, sub, initrd, NULL, must_exist, &i, err);
        if (q < 0)
                return q;
        q = locate_one("rootfs", artifact_dir, sub, rootfs, NULL, must_exist, &r, err);
        if (q < 0)
                return q;
        *ret_kernel = TAKE_PTR(k);
        *ret_initrd = TAKE_PTR(i);
        *ret_rootfs = TAKE_PTR(r);
        return 0;
}

static const char *const encrypted_tools[] = { "ctr-enc", "ctd-decoder", "rimd-keyprovider-proxy" };

static int tools_dir(const VmSpec *spec, const char *artifact_dir, char **ret) {
        char *d;

        if (spec->bare.dir)
                d = asprintf(&d, "%s/%s/executables", artifact_dir, spec->bare.dir) < 0 ? NULL : d;
        else
                d = path_join(artifact_dir, "executables");
        *ret = d;
        return d ? 0 : -ENOMEM;
}

static int step_locate(Provision *p, HydraError *err) {
        _cleanup_free_ char *kernel = NULL, *initrd = NULL, *rootfs = NULL, *dir = NULL;
        int r;

        if (p->spec.bare.encrypted_tools) {
                r = tools_dir(&p->spec, p->artifact_dir, &dir);
                if (r < 0)
                        return hydra_error_set(err, r, "out of memory");
                for (size_t i = 0; i < ELEMENTSOF(encrypted_tools); i++) {
                        _cleanup_free_ char *t = path_join(dir, encrypted_tools[i]);

                        if (!t)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        if (!is_file(t))
                                return hydra_error_set(err, -ENOENT,
                                                       "bare-kernel artifact: encrypted-container tool '%s' not "
                                                       "found in %s (the artifact is incomplete)",
                                                       encrypted_tools[i], dir);
                }
        }
        if (p->mode != BOOT_BARE_KERNEL)
                return 0;

        r = provision_locate_bare(&p->spec, p->artifact_dir, true, &kernel, &initrd, &rootfs, err);
        if (r < 0)
                return r;
        p->out.kernel = TAKE_PTR(kernel);
        p->out.initrd = TAKE_PTR(initrd);
        p->out.bare_kernel = true;
        free(p->image_base);
        p->image_base = TAKE_PTR(rootfs);
        p->base_format = disk_format_probe(p->image_base);
        free(p->base_identity);
        if (asprintf(&p->base_identity, "%s:%s", p->artifact_digest, p->spec.bare.rootfs) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        return 0;
}

/* --- the cloud-init seed --- */

typedef struct ToolBlobs {
        CloudInitBlob blobs[ELEMENTSOF(encrypted_tools)];
        void *data[ELEMENTSOF(encrypted_tools)];
        size_t n;
} ToolBlobs;

static void tool_blobs_done(ToolBlobs *t) {
        for (size_t i = 0; i < ELEMENTSOF(t->data); i++)
                free(t->data[i]);
}

#define TOOL_MAX_SIZE (256U * 1024U * 1024U)

static int load_tool_blobs(const VmSpec *spec, const char *artifact_dir, ToolBlobs *t, HydraError *err) {
        _cleanup_free_ char *dir = NULL;
        int r;

        if (!spec->bare.encrypted_tools || !artifact_dir)
                return 0;
        r = tools_dir(spec, artifact_dir, &dir);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        for (size_t i = 0; i < ELEMENTSOF(encrypted_tools); i++) {
                size_t size;

                r = store_read(dir, encrypted_tools[i], TOOL_MAX_SIZE, &t->data[i], &size, err);
                if (r < 0)
                        return r;
                t->blobs[i] = (CloudInitBlob) { .name = encrypted_tools[i], .data = t->data[i], .size = size };
                t->n = i + 1;
        }
        return 0;
}

/* packaging/install_crismux.sh, built into hydrad (cmake/embed.cmake, the build's gen/crismux_installer.c). */
extern const char crismux_installer_sh[];

static int render_seed(const VmSpec *spec, const ToolBlobs *tools, CloudInitFiles *files, HydraError *err) {
        CloudInitInput in = {
                .spec = spec,
                .debian_arch = provision_debian_arch(spec->arch),
                .tools = tools && tools->n > 0 ? tools->blobs : NULL,
                .n_tools = tools ? tools->n : 0,
                .crismux_installer = crismux_installer_sh,
        };

        return cloud_init_render(&in, files, err);
}

static const char *const seed_names[] = { "user-data", "meta-data", "network-config", "vendor-data" };

static const char *seed_file(const CloudInitFiles *f, size_t i) {
        const char *v[] = { f->user_data, f->meta_data, f->network_config, f->vendor_data };

        return strempty(v[i]);
}

static int seed_digest(const CloudInitFiles *f, char ret[static 65]) {
        _cleanup_free_ char *all = NULL;
        size_t n = 0;

        for (size_t i = 0; i < ELEMENTSOF(seed_names); i++)
                n += strlen(seed_file(f, i)) + 1;
        all = malloc(n + 1);
        if (!all)
                return -ENOMEM;
        n = 0;
        for (size_t i = 0; i < ELEMENTSOF(seed_names); i++) {
                size_t len = strlen(seed_file(f, i));

                memcpy(all + n, seed_file(f, i), len);
                n += len;
                all[n++] = '\0';
        }
        return sha256_hex(all, n, ret);
}

/* A helper program wrote DEST.part: on success it becomes DEST, on failure it goes. Returns 0 or -errno (err). */
static int commit_part(const ChildResult *res, const char *what, const char *dest, HydraError *err) {
        _cleanup_free_ char *part = NULL;

        if (asprintf(&part, "%s.part", dest) < 0)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (res->code != 0) {
                (void) unlink(part);
                child_describe_failure(what, res, err);
                return err->code;
        }
        if (rename(part, dest) < 0) {
                int r = hydra_error_set(err, -errno, "rename '%s': %m", part);

                (void) unlink(part);
                return r;
        }
        return 0;
}

static void after_seed_digest(Provision *p) {
        p->step = STEP_DISK;
        step_next(p);
}

static void on_iso_built(Child *c, const ChildResult *res, void *userdata) {
        Provision *p = userdata;
        HydraError e;
        int r;

        p->child = NULL;
        hydra_error_clear(&e);
        r = commit_part(res, "genisoimage (building the cloud-init seed)", p->out.seed_path, &e);
        if (r < 0)
                return provision_fail(p, &e);
        r = record_add(p, p->state_dir, "seed.digest", p->seed_digest, 0600, &e);
        if (r < 0)
                return provision_fail(p, &e);
        records_write_or_fail(p, after_seed_digest);
}

/* The seed's files are a worker's job from start to end: the encrypted-container tools are binaries of tens of
 * MiB, read and base64'd into user-data, and the files are fsync'd (issue 10). The job reads the spec and the
 * paths of its Provision, which stay as they are while it runs, and writes only its own fields. */
struct SeedJob {
        const VmSpec *spec;        /* borrowed */
        const char *artifact_dir;  /* borrowed */
        const char *state_dir;     /* borrowed */
        const char *seed_path;     /* borrowed */
        char digest[65];
        bool unchanged;            /* seed.iso was built from these very files: nothing was written */
        HydraError error;
        Provision *provision;      /* borrowed; for the loop side only */
};

/* On the worker thread. */
static int seed_run(Worker *w, void *userdata) {
        _cleanup_(cloud_init_files_done) CloudInitFiles files = {};
        _cleanup_(tool_blobs_done) ToolBlobs tools = {};
        _cleanup_free_ char *dir = NULL, *old = NULL;
        SeedJob *j = userdata;
        unsigned steps;
        int r;

        r = load_tool_blobs(j->spec, j->artifact_dir, &tools, &j->error);
        if (r < 0)
                return r;
        r = render_seed(j->spec, &tools, &files, &j->error);
        if (r < 0)
                return r;
        r = seed_digest(&files, j->digest);
        if (r < 0)
                return hydra_error_set(&j->error, r, "hash the cloud-init files: %s", strerror(-r));

        old = read_small(j->state_dir, "seed.digest");
        r = provision_steps(j->spec, &(ProvisionFacts) { .seed_digest = j->digest, .seed_built_from = old,
                                                         .seed_built = is_file(j->seed_path) }, &steps);
        if (r < 0)
                return hydra_error_set(&j->error, r, "out of memory");
        if (!(steps & PROVISION_STEP_BUILD_SEED)) {
                j->unchanged = true;
                return 0;
        }

        /* The files the ISO is made of, durable before the ISO is built. */
        (void) store_remove(j->state_dir, "seed.digest");
        dir = path_join(j->state_dir, "cloud-init");
        if (!dir)
                return hydra_error_set(&j->error, -ENOMEM, "out of memory");
        r = mkdir_p(dir, 0700);
        if (r < 0)
                return hydra_error_set(&j->error, r, "create '%s': %s", dir, strerror(-r));
        for (size_t i = 0; i < ELEMENTSOF(seed_names); i++) {
                if (worker_cancelled(w))
                        return -ECANCELED;
                r = store_write_atomic(dir, seed_names[i], seed_file(&files, i), strlen(seed_file(&files, i)), 0600,
                                       &j->error);
                if (r < 0)
                        return r;
        }
        return 0;
}

static void build_iso(Provision *p);

static void on_seed_ready(Worker *w, int r, void *userdata) {
        SeedJob *j = userdata;
        Provision *p = j->provision;
        HydraError e = j->error;
        bool unchanged = j->unchanged;

        p->worker = NULL;
        if (r >= 0) {
                p->seed_digest = strdup(j->digest);
                if (!p->seed_digest)
                        r = hydra_error_set(&e, -ENOMEM, "out of memory");
        }
        p->seed_job = mfree(p->seed_job);
        if (r < 0)
                return provision_fail(p, &e);
        if (unchanged) {
                log_vm_debug(p->name, "VM '%s': cloud-init seed unchanged", p->name);
                p->step = STEP_DISK;
                return step_next(p);
        }
        emit_progress(p, "seed", p->out.seed_path, 0, 0, 0);
        build_iso(p);
}

static int step_seed(Provision *p, HydraError *err) {
        SeedJob *j;
        int r;

        p->out.seed_path = path_join(p->state_dir, "seed.iso");
        j = calloc(1, sizeof(*j));
        if (!p->out.seed_path || !j) {
                free(j);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        *j = (SeedJob) { .spec = &p->spec, .artifact_dir = p->artifact_dir, .state_dir = p->state_dir,
                         .seed_path = p->out.seed_path, .provision = p };
        hydra_error_clear(&j->error);
        p->seed_job = j;
        r = worker_start(p->ctx.event, "provision-seed", seed_run, NULL, on_seed_ready, j, &p->worker);
        if (r < 0)
                return hydra_error_set(err, r, "start a thread to prepare the cloud-init seed: %s", strerror(-r));
        return 0;
}

/* The cloud-init files are durable: genisoimage makes the ISO of them. */
static void build_iso(Provision *p) {
        _cleanup_free_ char *dir = path_join(p->state_dir, "cloud-init"),
                            *iso_part = path_join(p->state_dir, "seed.iso.part");
        HydraError e;

        hydra_error_clear(&e);
        if (!dir || !iso_part)
                return provision_fail(p, &(HydraError) { .code = -ENOMEM, .message = "out of memory" });
        char *argv[] = {
                (char *) "genisoimage", (char *) "-quiet", (char *) "-output", iso_part, (char *) "-volid",
                (char *) "cidata", (char *) "-joliet", (char *) "-rock", (char *) "-input-charset", (char *) "utf-8",
                dir, NULL,
        };
        (void) unlink(iso_part);
        if (child_run(p->ctx.event, argv, on_iso_built, p, &p->child, &e) < 0)
                provision_fail(p, &e);
}

/* --- the disk --- */

static int disk_identity(Provision *p, char ret[static 65]) {
        return provision_disk_identity(p->base_identity, p->seed_digest, p->spec.keep_pristine, ret);
}

static void after_disk_identity(Provision *p) {
        p->step = STEP_GROW;
        step_next(p);
}

static void on_disk_made(Child *c, const ChildResult *res, void *userdata) {
        Provision *p = userdata;
        char identity[65];
        HydraError e;
        int r;

        p->child = NULL;
        hydra_error_clear(&e);
        r = commit_part(res, p->spec.keep_pristine ? "qemu-img create (overlay)" : "qemu-img convert (copy)",
                        p->out.disk_path, &e);
        if (r < 0)
                return provision_fail(p, &e);
        r = disk_identity(p, identity);
        if (r < 0)
                return provision_fail(p, &(HydraError) { .code = r, .message = "hash the disk identity" });
        r = record_add(p, p->state_dir, "disk.identity", identity, 0600, &e);
        if (r < 0)
                return provision_fail(p, &e);
        records_write_or_fail(p, after_disk_identity);
}

static int step_disk(Provision *p, HydraError *err) {
        _cleanup_free_ char *old = NULL, *part = NULL, *backing = NULL;
        char identity[65];
        unsigned steps;
        bool exists;
        int r;

        p->out.disk_path = path_join(p->state_dir, "disk.qcow2");
        part = path_join(p->state_dir, "disk.qcow2.part");
        if (!p->out.disk_path || !part)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        p->out.disk_format = "qcow2";

        r = disk_identity(p, identity);
        if (r < 0)
                return hydra_error_set(err, r, "hash the disk identity: %s", strerror(-r));

        exists = is_file(p->out.disk_path);
        if (exists)
                old = read_small(p->state_dir, "disk.identity");
        r = provision_steps(&p->spec, &(ProvisionFacts) { .base_identity = p->base_identity,
                                                          .seed_digest = p->seed_digest, .disk_made_from = old,
                                                          .disk_exists = exists },
                            &steps);
        if (r < 0)
                return hydra_error_set(err, r, "hash the disk identity: %s", strerror(-r));
        if (exists) {
                if (!(steps & (PROVISION_STEP_KEEP_DISK | PROVISION_STEP_RESET_DISK))) {
                        p->step = STEP_GROW;
                        step_next(p);
                        return 0;
                }
                if (steps & PROVISION_STEP_KEEP_DISK) {
                        emit_notice(p, "guest configuration changed; disk kept as is (reuse_disk_on_change): the "
                                       "changes reach the guest only through a fresh disk");
                        r = record_add(p, p->state_dir, "disk.identity", identity, 0600, err);
                        if (r < 0)
                                return r;
                        return records_write(p, after_disk_identity, err);
                }
                emit_notice(p, "disk reset to pristine: %s changed since the disk was made",
                            old ? "the guest configuration or the base image" : "the record of what it was made from");
                if (unlink(p->out.disk_path) < 0 && errno != ENOENT)
                        return hydra_error_set(err, -errno, "remove '%s': %m", p->out.disk_path);
                (void) store_remove(p->state_dir, "disk.identity");
        }

        emit_progress(p, "disk", p->out.disk_path, 0, 0, 0);
        (void) unlink(part);
        if (p->spec.keep_pristine) {
                /* The base stays pristine: the VM writes to an overlay that names it as backing file. */
                char *argv[] = {
                        (char *) "qemu-img", (char *) "create", (char *) "-q", (char *) "-f", (char *) "qcow2",
                        (char *) "-F", (char *) p->base_format, (char *) "-b", p->image_base, part, NULL,
                };
                return child_run(p->ctx.event, argv, on_disk_made, p, &p->child, err);
        }
        char *argv[] = {
                (char *) "qemu-img", (char *) "convert", (char *) "-q", (char *) "-f", (char *) p->base_format,
                (char *) "-O", (char *) "qcow2", p->image_base, part, NULL,
        };
        return child_run(p->ctx.event, argv, on_disk_made, p, &p->child, err);
}

static void on_resized(Child *c, const ChildResult *res, void *userdata) {
        Provision *p = userdata;
        HydraError e;

        p->child = NULL;
        hydra_error_clear(&e);
        if (res->code != 0) {
                child_describe_failure("qemu-img resize", res, &e);
                return provision_fail(p, &e);
        }
        p->step = STEP_FIRMWARE;
        step_next(p);
}

static void on_disk_info(Child *c, const ChildResult *res, void *userdata) {
        Provision *p = userdata;
        uint64_t want = (uint64_t) p->spec.disk_size_gib * GIB, have;
        char size[32];
        json_t *root, *vsize;
        HydraError e;
        int r;

        p->child = NULL;
        hydra_error_clear(&e);
        if (res->code != 0) {
                child_describe_failure("qemu-img info", res, &e);
                return provision_fail(p, &e);
        }
        root = json_loadb(res->out, res->out_len, 0, NULL);
        vsize = root ? json_object_get(root, "virtual-size") : NULL;
        if (!json_is_integer(vsize) || json_integer_value(vsize) < 0) {
                json_decref(root);
                (void) hydra_error_set(&e, -EBADMSG, "qemu-img info '%s': no virtual-size in its output",
                                       p->out.disk_path);
                return provision_fail(p, &e);
        }
        have = (uint64_t) json_integer_value(vsize);
        json_decref(root);

        r = must_run(p, &(ProvisionFacts) { .disk_size = have }, PROVISION_STEP_GROW_DISK);
        if (r < 0)
                return provision_fail(p, &(HydraError) { .code = r, .message = "out of memory" });
        if (r == 0) {
                if (have > want)
                        log_vm_info(p->name, "VM '%s': disk is %.1f GiB, not shrunk to disk_size %" PRIu32 " GiB",
                                    p->name, (double) have / (double) GIB, p->spec.disk_size_gib);
                p->step = STEP_FIRMWARE;
                return step_next(p);
        }

        emit_notice(p, "growing the disk from %.1f GiB to %" PRIu32 " GiB", (double) have / (double) GIB,
                    p->spec.disk_size_gib);
        (void) snprintf(size, sizeof(size), "%" PRIu64, want);
        char *argv[] = { (char *) "qemu-img", (char *) "resize", (char *) "-q", p->out.disk_path, size, NULL };
        r = child_run(p->ctx.event, argv, on_resized, p, &p->child, &e);
        if (r < 0)
                return provision_fail(p, &e);
}

/* The virtual size of a qcow2 image, from its header (big-endian u64 at offset 24, after magic, version,
 * backing file offset and size, cluster bits: QEMU's docs/interop/qcow2.txt). Saves spawning qemu-img info on
 * every start. Returns 0, or -errno when the file is not a qcow2 image we can read. */
static int qcow2_virtual_size(const char *path, uint64_t *ret) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
        unsigned char h[32];
        uint64_t v = 0;

        if (fd < 0)
                return -errno;
        if (pread(fd, h, sizeof(h), 0) != (ssize_t) sizeof(h))
                return -EIO;
        if (memcmp(h, "QFI\xfb", 4) != 0)
                return -EMEDIUMTYPE;
        for (int i = 24; i < 32; i++)
                v = (v << 8) | h[i];
        *ret = v;
        return 0;
}

static int step_grow(Provision *p, HydraError *err) {
        uint64_t have = 0;
        int r;

        if (!(p->planned & PROVISION_STEP_GROW_DISK)) {
                p->step = STEP_FIRMWARE;
                step_next(p);
                return 0;
        }
        if (qcow2_virtual_size(p->out.disk_path, &have) < 0)
                have = 0; /* not known: qemu-img info tells */
        r = must_run(p, &(ProvisionFacts) { .disk_size = have }, PROVISION_STEP_GROW_DISK);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        if (r == 0) {
                if (have > (uint64_t) p->spec.disk_size_gib * GIB)
                        log_vm_debug(p->name, "VM '%s': disk is %.1f GiB, not shrunk to disk_size %" PRIu32 " GiB",
                                     p->name, (double) have / (double) GIB, p->spec.disk_size_gib);
                p->step = STEP_FIRMWARE;
                step_next(p);
                return 0;
        }
        char *argv[] = { (char *) "qemu-img", (char *) "info", (char *) "-U", (char *) "--output=json",
                         p->out.disk_path, NULL };
        return child_run(p->ctx.event, argv, on_disk_info, p, &p->child, err);
}

/* --- firmware variables and shared memory --- */

static void on_vars_copied(Child *c, const ChildResult *res, void *userdata) {
        Provision *p = userdata;
        HydraError e;

        p->child = NULL;
        hydra_error_clear(&e);
        if (commit_part(res, "copying the firmware variable store", p->out.firmware_vars, &e) < 0)
                return provision_fail(p, &e);
        p->step = STEP_SHMEM;
        step_next(p);
}

static int step_firmware(Provision *p, HydraError *err) {
        _cleanup_free_ char *part = NULL;
        int r;

        if (!(p->planned & PROVISION_STEP_COPY_FIRMWARE_VARS)) {
                p->step = STEP_SHMEM;
                step_next(p);
                return 0;
        }
        p->out.firmware_vars = path_join(p->state_dir, "firmware-vars.fd");
        part = path_join(p->state_dir, "firmware-vars.fd.part");
        if (!p->out.firmware_vars || !part)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        /* The VM's variables persist across boots: copied from the template once. */
        r = must_run(p, &(ProvisionFacts) { .firmware_vars_copied = is_file(p->out.firmware_vars) },
                     PROVISION_STEP_COPY_FIRMWARE_VARS);
        if (r < 0)
                return hydra_error_set(err, r, "out of memory");
        if (r == 0) {
                p->step = STEP_SHMEM;
                step_next(p);
                return 0;
        }
        if (access(p->spec.firmware_vars, R_OK) < 0)
                return hydra_error_set(err, -errno, "firmware.vars '%s': %m", p->spec.firmware_vars);
        char *argv[] = { (char *) "cp", (char *) "--sparse=auto", (char *) "--", p->spec.firmware_vars, part, NULL };
        return child_run(p->ctx.event, argv, on_vars_copied, p, &p->child, err);
}

/* The shared-memory backing file is mapped share=on into the guest, and QEMU itself would grow a file that is too
 * small: a typo in devices.shmem_path must not hand a real file to the guest (issue 9). So hydrad creates the
 * file only inside the VM's state dir, marks what it created with a user xattr, and maps an existing file only if
 * it carries the mark. Outside the state dir (another VM's file, for ivshmem between the two) it is never
 * resized: it must already be large enough. The mark lives on the inode, so it goes with the file and cannot be
 * inherited by an unrelated file that reuses a name or an inode number, as a record kept elsewhere could. */
#define SHMEM_XATTR "user.hydra.shmem"

/* 1 if path lies inside dir (both resolved: a symlink in the path cannot lead out), 0 if not, <0 on error. */
static int path_inside(const char *path, const char *dir) {
        _cleanup_free_ char *parent = strdup(path), *real_parent = NULL, *real_dir = NULL;
        char *slash;
        size_t n;

        if (!parent)
                return -ENOMEM;
        slash = strrchr(parent, '/');
        if (!slash)
                return 0;
        *(slash == parent ? slash + 1 : slash) = '\0';
        real_parent = realpath(parent, NULL);
        real_dir = realpath(dir, NULL);
        if (!real_parent || !real_dir)
                return errno == ENOENT || errno == ENOTDIR ? 0 : -errno;
        n = strlen(real_dir);
        return strncmp(real_parent, real_dir, n) == 0 && (real_parent[n] == '\0' || real_parent[n] == '/');
}

static int shmem_create(const char *path, const char *name, uint64_t want, HydraError *err) {
        _cleanup_close_ int fd = -EBADF;
        int r;

        fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return hydra_error_set(err, -errno, "devices.shmem_path '%s': create: %m", path);
        if (fsetxattr(fd, SHMEM_XATTR, name, strlen(name), 0) < 0 || ftruncate(fd, (off_t) want) < 0) {
                r = hydra_error_set(err, -errno, "devices.shmem_path '%s': mark or size the new file: %m (the "
                                    "state dir's file system must keep user extended attributes)", path);
                (void) unlink(path);
                return r;
        }
        return 0;
}

int provision_shmem(const char *state_dir, const char *name, const VmSpec *spec, char **ret_path,
                    uint64_t *ret_grown_to, HydraError *err) {
        _cleanup_close_ int pfd = -EBADF, fd = -EBADF;
        _cleanup_free_ char *path = NULL;
        char self[64], mark[64];
        uint64_t want;
        struct stat st;
        int inside, r;

        *ret_grown_to = 0;
        want = (uint64_t) (spec->devices.shmem_size_gib ? spec->devices.shmem_size_gib : SPEC_DEFAULT_SHMEM_SIZE_GIB) *
               GIB;
        if (spec->devices.shmem == SHMEM_NVDIMM)
                want += 2 * MIB;
        path = isempty(spec->devices.shmem_path) ? path_join(state_dir, "shmem") : strdup(spec->devices.shmem_path);
        if (!path)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        inside = path_inside(path, state_dir);
        if (inside < 0)
                return hydra_error_set(err, inside, "devices.shmem_path '%s': %s", path, strerror(-inside));

        /* O_PATH: nothing is opened for I/O (a device could act on open) before we know it is a regular file. */
        pfd = open(path, O_PATH | O_NOFOLLOW | O_CLOEXEC);
        if (pfd < 0 && errno == ENOENT) {
                if (!inside)
                        return hydra_error_set(err, -ENOENT, "devices.shmem_path '%s' does not exist, and hydrad "
                                               "creates shared-memory files only in the VM's state dir %s (leave "
                                               "shmem_path unset for %s/shmem)", path, state_dir, state_dir);
                r = shmem_create(path, name, want, err);
                if (r < 0)
                        return r;
                *ret_grown_to = want;
                *ret_path = TAKE_PTR(path);
                return 0;
        }
        if (pfd < 0)
                return hydra_error_set(err, -errno, "devices.shmem_path '%s': %m", path);
        if (fstat(pfd, &st) < 0)
                return hydra_error_set(err, -errno, "devices.shmem_path '%s': stat: %m", path);
        if (!S_ISREG(st.st_mode))
                return hydra_error_set(err, -EINVAL, "devices.shmem_path '%s' is not a regular file (a %s); hydrad "
                                       "maps only a file it created", path,
                                       S_ISLNK(st.st_mode) ? "symbolic link" : S_ISDIR(st.st_mode) ? "directory" :
                                                                                                  "special file");
        (void) snprintf(self, sizeof(self), "/proc/self/fd/%d", pfd);
        fd = open(self, O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return hydra_error_set(err, -errno, "devices.shmem_path '%s': %m", path);
        if (fgetxattr(fd, SHMEM_XATTR, mark, sizeof(mark)) < 0) {
                if (errno != ENODATA && errno != ENOTSUP)
                        return hydra_error_set(err, -errno, "devices.shmem_path '%s': read its mark: %m", path);
                return hydra_error_set(err, -EPERM, "devices.shmem_path '%s' exists but was not created by hydrad "
                                       "(no %s mark); hydrad will not map or resize it. Remove it or name a path "
                                       "that does not exist in the VM's state dir %s", path, SHMEM_XATTR, state_dir);
        }
        if ((uint64_t) st.st_size < want) {
                if (!inside)
                        return hydra_error_set(err, -EINVAL, "devices.shmem_path '%s' has the wrong size: %" PRIu64
                                               " bytes, %" PRIu64 " needed; hydrad grows only files in the VM's "
                                               "state dir %s", path, (uint64_t) st.st_size, want, state_dir);
                if (ftruncate(fd, (off_t) want) < 0)
                        return hydra_error_set(err, -errno, "grow '%s' to %" PRIu64 " bytes: %m", path, want);
                *ret_grown_to = want;
        }
        *ret_path = TAKE_PTR(path);
        return 0;
}

static int step_shmem(Provision *p, HydraError *err) {
        uint64_t grown_to;
        int r;

        if (!(p->planned & PROVISION_STEP_SHMEM))
                return 0;
        r = provision_shmem(p->state_dir, p->name, &p->spec, &p->out.shmem_path, &grown_to, err);
        if (r < 0)
                return r;
        if (grown_to > 0)
                emit_notice(p, "shared memory file %s sized to %" PRIu64 " MiB", p->out.shmem_path,
                            grown_to / MIB);
        return 0;
}

/* The host side of the 9p shares: the kubelet directories are made, as start-vm.sh makes them; an extra share
 * must exist (it is the user's data, and a typo must not become an empty directory). */
static int step_shares(Provision *p, HydraError *err) {
        const char *base = p->spec.shares.kubelet_host_dir ? p->spec.shares.kubelet_host_dir : "";
        static const char *const kubelet[] = { "var/lib/kubelet", "var/log/pods" };
        struct stat st;
        int r;

        if (!(p->planned & PROVISION_STEP_SHARES))
                return 0;
        if (p->spec.shares.kubelet == KUBELET_SHARES_VIRTIO)
                for (size_t i = 0; i < ELEMENTSOF(kubelet); i++) {
                        _cleanup_free_ char *dir = NULL;

                        if (asprintf(&dir, "%s/%s", streq(base, "/") ? "" : base, kubelet[i]) < 0)
                                return hydra_error_set(err, -ENOMEM, "out of memory");
                        if (stat(dir, &st) == 0 && S_ISDIR(st.st_mode))
                                continue;
                        r = mkdir_p(dir, 0755);
                        if (r < 0)
                                return hydra_error_set(err, r, "shares: create '%s': %s", dir, strerror(-r));
                        emit_notice(p, "created %s for the kubelet share", dir);
                }
        for (size_t i = 0; i < p->spec.shares.n_extra; i++) {
                const char *hp = p->spec.shares.extra[i].host_path;

                if (stat(hp, &st) < 0)
                        return hydra_error_set(err, -errno, "shares.extra[%zu].host_path '%s': %m", i, hp);
                if (!S_ISDIR(st.st_mode))
                        return hydra_error_set(err, -ENOTDIR, "shares.extra[%zu].host_path '%s' is not a directory",
                                               i, hp);
        }
        return 0;
}

/* --- the chain --- */

static int step_run(Provision *p, HydraError *err) {
        int r;

        switch (p->step) {
        case STEP_IMAGE_FETCH:
                if (!(p->planned & PROVISION_STEP_FETCH_IMAGE)) {
                        p->step = STEP_ARTIFACT_FETCH;
                        return step_run(p, err);
                }
                return start_fetch(p, &p->spec.image, on_image_fetched, err);
        case STEP_ARTIFACT_FETCH:
                if (!(p->planned & PROVISION_STEP_FETCH_ARTIFACT)) {
                        p->step = STEP_SEED;
                        return step_run(p, err);
                }
                return start_fetch(p, &p->spec.bare.artifact, on_artifact_fetched, err);
        case STEP_LOCATE:
                r = step_locate(p, err);
                if (r < 0)
                        return r;
                p->step = STEP_SEED;
                return step_run(p, err);
        case STEP_SEED:
                if (!(p->planned & PROVISION_STEP_BUILD_SEED)) {
                        p->step = STEP_DISK;
                        return step_run(p, err);
                }
                return step_seed(p, err);
        case STEP_DISK:
                if (!(p->planned & PROVISION_STEP_MAKE_DISK)) {
                        p->step = STEP_FIRMWARE;
                        return step_run(p, err);
                }
                return step_disk(p, err);
        case STEP_GROW:
                return step_grow(p, err);
        case STEP_FIRMWARE:
                return step_firmware(p, err);
        case STEP_SHMEM:
                r = step_shares(p, err);
                if (r < 0)
                        return r;
                r = step_shmem(p, err);
                if (r < 0)
                        return r;
                p->step = STEP_DONE;
                return step_run(p, err);
        case STEP_DONE:
                provision_succeed(p);
                return 1; /* p is gone */
        default:
                return hydra_error_set(err, -EINVAL, "internal error: step %d", (int) p->step);
        }
}

/* Steps chain from completion callbacks; each step that finishes synchronously continues through here. A step
 * that returns 1 has freed p. */
static void step_next(Provision *p) {
        HydraError err;
        int r;

        hydra_error_clear(&err);
        r = step_run(p, &err);
        if (r < 0)
                provision_fail(p, &err);
}

static int on_defer(sd_event_source *s, void *userdata) {
        Provision *p = userdata;

        p->defer = sd_event_source_disable_unref(p->defer);
        step_next(p);
        return 0;
}

int provision_start(const ProvisionContext *ctx, const VmSpec *spec, const ProvisionCallbacks *cb, void *userdata,
                    Provision **ret, HydraError *err) {
        Provision *p;
        int r;

        p = calloc(1, sizeof(*p));
        if (!p)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        p->name = strdup(ctx->name);
        p->state_dir = strdup(ctx->state_dir);
        p->cache_dir = strdup(ctx->cache_dir);
        p->artifact_dir = path_join(ctx->state_dir, "artifact");
        if (!p->name || !p->state_dir || !p->cache_dir || !p->artifact_dir || vm_spec_copy(&p->spec, spec) < 0) {
                provision_free(p);
                return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        p->ctx = (ProvisionContext) { .event = ctx->event, .fetcher = ctx->fetcher, .name = p->name,
                                      .state_dir = p->state_dir, .cache_dir = p->cache_dir };
        p->cb = *cb;
        p->userdata = userdata;
        p->mode = vm_spec_boot_mode(spec);
        r = provision_steps(&p->spec, &(ProvisionFacts) {}, &p->planned);
        if (r < 0) {
                provision_free(p);
                return hydra_error_set(err, r, "out of memory");
        }
        p->step = STEP_IMAGE_FETCH;

        /* The first step runs from the loop, so that done is never called before this returns. */
        r = sd_event_add_defer(ctx->event, &p->defer, on_defer, p);
        if (r < 0) {
                provision_free(p);
                return hydra_error_set(err, r, "schedule preparation: %s", strerror(-r));
        }
        *ret = p;
        return 0;
}

int provision_plan(const ProvisionContext *ctx, const VmSpec *spec, ProvisionOutput *out, CloudInitFiles *files,
                   HydraError *err) {
        _cleanup_(provision_output_done) ProvisionOutput o = {};
        _cleanup_(cloud_init_files_done) CloudInitFiles f = {};
        _cleanup_free_ char *artifact = NULL, *rootfs = NULL;
        BootMode mode = vm_spec_boot_mode(spec);
        int r;

        if (mode != BOOT_LOCAL) {
                o.disk_path = path_join(ctx->state_dir, "disk.qcow2");
                if (!o.disk_path)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                o.disk_format = "qcow2";
        }
        if (mode == BOOT_CLOUD_IMAGE) {
                o.seed_path = path_join(ctx->state_dir, "seed.iso");
                if (!o.seed_path)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                /* The encrypted-container tools are embedded at start, once downloaded: not in a plan, which
                 * renders the seed as if they were not asked for (a borrowed shallow copy). */
                VmSpec without_tools = *spec;

                without_tools.bare.encrypted_tools = false;
                r = render_seed(&without_tools, NULL, &f, err);
                if (r < 0)
                        return r;
        }
        if (mode == BOOT_BARE_KERNEL) {
                artifact = path_join(ctx->state_dir, "artifact");
                if (!artifact)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
                /* Where it would be found now; before the first download, where start-vm.sh looks first. */
                r = provision_locate_bare(spec, artifact, false, &o.kernel, &o.initrd, &rootfs, err);
                if (r < 0)
                        return r;
                o.bare_kernel = true;
        }
        if (spec->firmware_vars) {
                o.firmware_vars = path_join(ctx->state_dir, "firmware-vars.fd");
                if (!o.firmware_vars)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        if (spec->devices.shmem != SHMEM_NONE) {
                o.shmem_path = spec->devices.shmem_path ? strdup(spec->devices.shmem_path)
                                                        : path_join(ctx->state_dir, "shmem");
                if (!o.shmem_path)
                        return hydra_error_set(err, -ENOMEM, "out of memory");
        }
        *out = o;
        o = (ProvisionOutput) {};
        *files = f;
        f = (CloudInitFiles) {};
        return 0;
}
