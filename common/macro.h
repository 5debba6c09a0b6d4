/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A small copy of systemd's cleanup helpers (src/fundamental/cleanup-fundamental.h). */

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _likely_(x) (__builtin_expect(!!(x), 1))
#define _unlikely_(x) (__builtin_expect(!!(x), 0))

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define sizeof_field(type, member) sizeof(((type *) 0)->member)

#define TAKE_PTR(p)                        \
        ({                                 \
                typeof(p) _ptr_ = (p);     \
                (p) = NULL;                \
                _ptr_;                     \
        })

#define TAKE_FD(fd)                        \
        ({                                 \
                int _fd_ = (fd);           \
                (fd) = -EBADF;             \
                _fd_;                      \
        })

static inline void freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(freep)

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

/* Frees a and moves b into it (b becomes NULL). */
#define free_and_replace(a, b)             \
        ({                                 \
                free(a);                   \
                (a) = (b);                 \
                (b) = NULL;                \
                0;                         \
        })

static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}

static inline void closep(int *fd) {
        *fd = safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(closep)

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline void strv_free_contents(char **l) {
        for (char **i = l; i && *i; i++)
                free(*i);
}

static inline char **strv_free(char **l) {
        strv_free_contents(l);
        free(l);
        return NULL;
}

static inline void strv_freep(char ***l) {
        *l = strv_free(*l);
}
#define _cleanup_strv_free_ _cleanup_(strv_freep)

static inline size_t strv_length(char *const *l) {
        size_t n = 0;

        for (; l && l[n]; n++)
                ;
        return n;
}

static inline bool strv_isempty(char *const *l) {
        return !l || !l[0];
}

static inline bool strv_contains(char *const *l, const char *s) {
        for (size_t i = 0; l && l[i]; i++)
                if (strcmp(l[i], s) == 0)
                        return true;
        return false;
}

/* Appends a copy of s (NULL: nothing). Returns 0 or -ENOMEM. */
static inline int strv_push_copy(char ***l, const char *s) {
        size_t n = strv_length(*l);
        char **c;

        if (!s)
                return 0;
        c = realloc(*l, (n + 2) * sizeof(char *));
        if (!c)
                return -ENOMEM;
        *l = c;
        c[n] = strdup(s);
        c[n + 1] = NULL;
        return c[n] ? 0 : -ENOMEM;
}

/* A deep copy; NULL on ENOMEM. strv_copy(NULL) is an empty list. */
static inline char **strv_copy(char *const *l) {
        size_t n = strv_length(l);
        char **c = calloc(n + 1, sizeof(char *));

        if (!c)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                c[i] = strdup(l[i]);
                if (!c[i])
                        return strv_free(c);
        }
        return c;
}

/* *dst = a copy of src, or NULL for NULL. Returns 0 or -ENOMEM. */
static inline int strdup_or_null(char **dst, const char *src) {
        *dst = src ? strdup(src) : NULL;
        return !src || *dst ? 0 : -ENOMEM;
}

#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func)        \
        static inline void func##p(type *p) {          \
                if (*p)                                \
                        *p = func(*p);                 \
        }

/* Map a value to and from its name through a NULL-terminated table. */
#define DEFINE_STRING_TABLE_LOOKUP(name, type, max)                       \
        const char *name##_to_string(type i) {                            \
                if ((int) i < 0 || (size_t) i >= ELEMENTSOF(name##_table)) \
                        return NULL;                                      \
                return name##_table[i];                                   \
        }                                                                 \
        type name##_from_string(const char *s) {                          \
                if (!s)                                                   \
                        return (type) -EINVAL;                            \
                for (size_t i = 0; i < (size_t) (max); i++)               \
                        if (name##_table[i] && strcmp(name##_table[i], s) == 0) \
                                return (type) i;                          \
                return (type) -EINVAL;                                    \
        }

#define streq(a, b) (strcmp((a), (b)) == 0)
#define isempty(s) (!(s) || !*(s))

static inline const char *strempty(const char *s) {
        return s ? s : "";
}
