/* SPDX-License-Identifier: MIT */
#include <stdlib.h>
#include <string.h>

#include "redact.h"

char *url_redact_query(const char *query) {
        size_t n_items = 1;
        char *out, *o;

        if (!query)
                return NULL;
        for (const char *p = query; *p; p++)
                n_items += *p == '&';
        /* each item grows by at most strlen(URL_REDACTED): "name=v" → "name=REDACTED", "tok" → "REDACTED" */
        out = malloc(strlen(query) + n_items * strlen(URL_REDACTED) + 1);
        if (!out)
                return NULL;

        o = out;
        for (const char *item = query;;) {
                size_t len = strcspn(item, "&");
                const char *eq = memchr(item, '=', len);

                if (eq) {
                        size_t name_len = (size_t) (eq - item) + 1;
                        memcpy(o, item, name_len);
                        o += name_len;
                        if (eq + 1 < item + len)
                                o = stpcpy(o, URL_REDACTED);
                } else if (len > 0)
                        o = stpcpy(o, URL_REDACTED);

                if (item[len] == '\0')
                        break;
                *o++ = '&';
                item += len + 1;
        }
        *o = '\0';
        return out;
}
