/* SPDX-License-Identifier: MIT */
#include <crypt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "password.h"

/* struct crypt_data is 32 KiB and holds the phrase while crypt_rn runs: on the heap, wiped after use. */
static struct crypt_data *crypt_data_new(void) {
        return calloc(1, sizeof(struct crypt_data));
}

static struct crypt_data *crypt_data_free(struct crypt_data *d) {
        if (d) {
                explicit_bzero(d, sizeof(*d));
                free(d);
        }
        return NULL;
}
DEFINE_TRIVIAL_CLEANUP_FUNC(struct crypt_data *, crypt_data_free);

void password_free(char *s) {
        if (!s)
                return;
        explicit_bzero(s, strlen(s));
        free(s);
}

/* crypt_rn() with setting; returns a copy of the hash. */
static int hash_with_setting(const char *password, const char *setting, char **ret_hash, HydraError *err) {
        _cleanup_(crypt_data_freep) struct crypt_data *d = crypt_data_new();
        const char *h;
        char *copy;

        if (!d)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        if (strlen(password) > PASSWORD_MAX_BYTES)
                return hydra_error_set(err, -EINVAL, "the password is longer than %d bytes", PASSWORD_MAX_BYTES);
        errno = 0;
        h = crypt_rn(password, setting, d, (int) sizeof(*d));
        /* Failures return NULL, or with some builds a string starting with '*' ("*0"). */
        if (!h || h[0] == '*')
                return hydra_error_set(err, errno > 0 ? -errno : -EINVAL, "cannot hash the password (%s): %s",
                                       setting, errno > 0 ? strerror(errno) : "refused by libcrypt");
        copy = strdup(h);
        if (!copy)
                return hydra_error_set(err, -ENOMEM, "out of memory");
        *ret_hash = copy;
        return 0;
}

int password_hash_yescrypt(const char *password, char **ret_hash, HydraError *err) {
        char setting[CRYPT_GENSALT_OUTPUT_SIZE];

        /* No random bytes of ours: libcrypt takes them from getrandom(). Count 0: the library's default cost. */
        if (!crypt_gensalt_rn("$y$", 0, NULL, 0, setting, (int) sizeof(setting)))
                return hydra_error_set(err, -errno ?: -EINVAL, "cannot make a yescrypt salt: %m");
        return hash_with_setting(password, setting, ret_hash, err);
}

int password_hash_sha512(const char *password, const char *salt, char **ret_hash, HydraError *err) {
        char setting[64];

        /* openssl passwd -6 takes at most 16 salt characters and ignores the rest, like crypt(3). */
        if (isempty(salt) || strcspn(salt, "$:\n\r\t ") != strlen(salt))
                return hydra_error_set(err, -EINVAL, "'%s' is not a usable salt (1-16 characters, no '$', ':' or "
                                       "blanks)", strempty(salt));
        snprintf(setting, sizeof(setting), "$6$%.16s$", salt);
        return hash_with_setting(password, setting, ret_hash, err);
}

bool password_verify(const char *password, const char *hash) {
        _cleanup_(crypt_data_freep) struct crypt_data *d = NULL;
        const char *h;

        if (isempty(hash) || hash[0] != '$')
                return false;
        d = crypt_data_new();
        if (!d)
                return false;
        h = crypt_rn(password, hash, d, (int) sizeof(*d));
        return h && h[0] != '*' && streq(h, hash);
}
