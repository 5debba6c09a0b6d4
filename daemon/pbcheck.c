/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pbcheck.h"
#include "utf8.h"

/* Far deeper than any message of ours; bounds the recursion on hostile input. */
#define PB_CHECK_MAX_DEPTH 32

typedef struct Reader {
        const uint8_t *p, *end;
} Reader;

/* Returns 0, or -EBADMSG when the varint is cut short or longer than 10 bytes. */
static int read_varint(Reader *r, uint64_t *ret) {
        uint64_t v = 0;

        for (unsigned shift = 0; shift < 70; shift += 7) {
                uint8_t b;

                if (r->p >= r->end)
                        return -EBADMSG;
                b = *r->p++;
                v |= (uint64_t) (b & 0x7f) << shift;
                if (!(b & 0x80)) {
                        *ret = v;
                        return 0;
                }
        }
        return -EBADMSG;
}

static int skip(Reader *r, uint64_t n) {
        if ((uint64_t) (r->end - r->p) < n)
                return -EBADMSG;
        r->p += n;
        return 0;
}

/* path holds the dotted path of the message being walked (len bytes, may be empty); appends ".field" or
 * ".field[i]" for the error. */
static int fail_field(HydraError *err, const char *path, const ProtobufCFieldDescriptor *f, int index,
                      const char *what) {
        char idx[16] = "";

        if (index >= 0)
                (void) snprintf(idx, sizeof(idx), "[%d]", index);
        return hydra_error_set(err, -EINVAL, "%s%s%s%s: %s", path, *path ? "." : "", f->name, idx, what);
}

static int check_message(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size, char *path,
                         size_t path_size, unsigned depth, HydraError *err) {
        _cleanup_free_ unsigned *seen = NULL; /* occurrences so far, by field index: the index of a repeated one */
        Reader r = { data, data + size };
        int k;

        if (depth > PB_CHECK_MAX_DEPTH)
                return hydra_error_set(err, -EBADMSG, "%s: messages nested too deep", path);
        seen = calloc(desc->n_fields ?: 1, sizeof(unsigned));
        if (!seen)
                return hydra_error_set(err, -ENOMEM, "out of memory");

        while (r.p < r.end) {
                const ProtobufCFieldDescriptor *f;
                uint64_t tag, len, v;
                const uint8_t *value;
                int index = -1;

                if (read_varint(&r, &tag) < 0 || (tag >> 3) == 0 || (tag >> 3) > INT32_MAX)
                        goto bad;
                switch (tag & 7) {
                case 0: /* varint */
                        if (read_varint(&r, &v) < 0)
                                goto bad;
                        continue;
                case 1: /* 64-bit */
                        if (skip(&r, 8) < 0)
                                goto bad;
                        continue;
                case 5: /* 32-bit */
                        if (skip(&r, 4) < 0)
                                goto bad;
                        continue;
                case 2: /* length-delimited: below */
                        break;
                default: /* groups (3, 4): protobuf-c refuses them too; 6, 7: not wire types */
                        goto bad;
                }
                if (read_varint(&r, &len) < 0 || (uint64_t) (r.end - r.p) < len)
                        goto bad;
                value = r.p;
                r.p += len;

                f = protobuf_c_message_descriptor_get_field(desc, (unsigned) (tag >> 3));
                if (!f)
                        continue; /* unknown: unpacking keeps it aside, nobody reads it as a string */
                if (f->label == PROTOBUF_C_LABEL_REPEATED)
                        index = (int) seen[f - desc->fields]++;

                if (f->type == PROTOBUF_C_TYPE_STRING) {
                        if (memchr(value, '\0', len))
                                return fail_field(err, path, f, index, "holds a NUL byte (not allowed in a string)");
                        if (!utf8_valid(value, len))
                                return fail_field(err, path, f, index, "is not valid UTF-8");
                } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
                        size_t n = strlen(path);
                        int w;

                        if (index >= 0)
                                w = snprintf(path + n, path_size - n, "%s%s[%d]", n ? "." : "", f->name, index);
                        else
                                w = snprintf(path + n, path_size - n, "%s%s", n ? "." : "", f->name);
                        if (w < 0 || (size_t) w >= path_size - n)
                                return hydra_error_set(err, -EBADMSG, "%s: messages nested too deep", path);
                        k = check_message(f->descriptor, value, len, path, path_size, depth + 1, err);
                        if (k < 0)
                                return k;
                        path[n] = '\0';
                }
        }
        return 0;

bad:
        if (*path)
                return hydra_error_set(err, -EBADMSG, "%s: not a valid %s message", path, desc->short_name);
        return hydra_error_set(err, -EBADMSG, "not a valid %s message", desc->short_name);
}

int pb_check_strings(const ProtobufCMessageDescriptor *desc, const void *data, size_t size, HydraError *err) {
        char path[512] = "";

        if (size == 0)
                return 0; /* the empty message (data may be NULL) */
        if (!data)
                return hydra_error_set(err, -EBADMSG, "not a valid %s message: no data", desc->short_name);
        return check_message(desc, data, size, path, sizeof(path), 0, err);
}
