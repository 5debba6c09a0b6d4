/* SPDX-License-Identifier: MIT */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "error.h"

int hydra_error_set(HydraError *err, int code, const char *fmt, ...) {
        va_list ap;

        if (code >= 0)
                code = -EIO;
        if (!err)
                return code;

        err->code = code;
        va_start(ap, fmt);
        (void) vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
        return code;
}

int hydra_error_prefix(HydraError *err, const char *fmt, ...) {
        char prefix[256];
        size_t plen, mlen;
        va_list ap;

        if (!err)
                return -EIO;

        va_start(ap, fmt);
        (void) vsnprintf(prefix, sizeof(prefix), fmt, ap);
        va_end(ap);
        plen = strlen(prefix);
        mlen = strlen(err->message);
        if (plen + mlen >= sizeof(err->message))
                mlen = sizeof(err->message) - 1 - plen;
        memmove(err->message + plen, err->message, mlen);
        memcpy(err->message, prefix, plen);
        err->message[plen + mlen] = '\0';
        return err->code;
}
