/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "macro.h"
#include "url.h"

static void curl_url_cleanupp(CURLU **u) {
        curl_url_cleanup(*u);
}

static void curl_freep(char **s) {
        curl_free(*s);
}

/* For what libcurl refuses: the fragment dropped, the query redacted, userinfo cut from the authority. */
static char *display_by_hand(const char *url) {
        _cleanup_free_ char *raw_query = NULL, *query = NULL;
        size_t end = strcspn(url, "#"), base_len, skip_from = 0, skip_len = 0;
        const char *q = memchr(url, '?', end), *sep;
        char *s;

        base_len = q ? (size_t) (q - url) : end;
        sep = memmem(url, base_len, "://", 3);
        if (sep) {
                const char *auth = sep + 3;
                size_t auth_len = strcspn(auth, "/?#");
                const char *at = memrchr(auth, '@', auth_len);

                if (at) {
                        skip_from = (size_t) (auth - url);
                        skip_len = (size_t) (at + 1 - auth);
                }
        }
        if (q) {
                raw_query = strndup(q + 1, end - base_len - 1);
                query = raw_query ? url_redact_query(raw_query) : NULL;
                if (!query)
                        return NULL;
        }
        if (asprintf(&s, "%.*s%.*s%s%s", (int) skip_from, url, (int) (base_len - skip_from - skip_len),
                     url + skip_from + skip_len, q ? "?" : "", strempty(query)) < 0)
                return NULL;
        return s;
}

char *url_display(const char *url) {
        _cleanup_(curl_url_cleanupp) CURLU *u = NULL;
        _cleanup_(curl_freep) char *query = NULL, *shown = NULL;
        _cleanup_free_ char *redacted = NULL;
        CURLUcode rc;

        if (!url)
                return NULL;
        u = curl_url();
        if (!u)
                return NULL;
        /* any scheme, and the path as given ("a/../b" is what the user wrote) */
        rc = curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS);
        if (rc == CURLUE_OUT_OF_MEMORY)
                return NULL;
        if (rc != CURLUE_OK)
                return display_by_hand(url);

        if (curl_url_set(u, CURLUPART_USER, NULL, 0) != CURLUE_OK ||
            curl_url_set(u, CURLUPART_PASSWORD, NULL, 0) != CURLUE_OK ||
            curl_url_set(u, CURLUPART_OPTIONS, NULL, 0) != CURLUE_OK ||
            curl_url_set(u, CURLUPART_FRAGMENT, NULL, 0) != CURLUE_OK)
                return NULL;

        rc = curl_url_get(u, CURLUPART_QUERY, &query, 0);
        if (rc == CURLUE_OK) {
                redacted = url_redact_query(query);
                if (!redacted)
                        return NULL;
                /* as is: no URL-encoding of what is already encoded */
                if (curl_url_set(u, CURLUPART_QUERY, redacted, 0) != CURLUE_OK)
                        return NULL;
        } else if (rc != CURLUE_NO_QUERY)
                return NULL;

        if (curl_url_get(u, CURLUPART_URL, &shown, 0) != CURLUE_OK)
                return display_by_hand(url);
        return strdup(shown);
}

int url_scrub_text(char *text, size_t size, const char *url) {
        _cleanup_free_ char *raw = NULL, *redacted = NULL;
        size_t end, raw_len, red_len;
        const char *q;
        char *p;

        if (!text || size == 0 || !url)
                return 0;
        end = strcspn(url, "#");
        q = memchr(url, '?', end);
        if (!q || q + 1 == url + end)
                return 0;
        raw = strndup(q + 1, (size_t) (url + end - q - 1));
        redacted = raw ? url_redact_query(raw) : NULL;
        if (!redacted) {
                if (raw && (p = strstr(text, raw)))
                        *p = '\0';
                else if (!raw && (p = strchr(text, '?')))
                        *p = '\0'; /* cannot even tell what to look for: nothing after any '?' */
                return -ENOMEM;
        }
        raw_len = strlen(raw);
        red_len = strlen(redacted);

        for (p = strstr(text, raw); p; p = strstr(p, raw)) {
                size_t head = (size_t) (p - text), tail = strlen(p + raw_len), room = size - 1 - head;
                size_t put = red_len < room ? red_len : room;
                size_t keep = tail < room - put ? tail : room - put;

                memmove(p + put, p + raw_len, keep);
                memcpy(p, redacted, put);
                p[put + keep] = '\0';
                p += put;
        }
        return 0;
}

/* url parsed the way libcurl will parse it to fetch it: any scheme, path as given. NULL if it cannot be. */
static CURLU *url_parse(const char *url) {
        CURLU *u;

        if (!url)
                return NULL;
        u = curl_url();
        if (u && curl_url_set(u, CURLUPART_URL, url, CURLU_NON_SUPPORT_SCHEME | CURLU_PATH_AS_IS) != CURLUE_OK) {
                curl_url_cleanup(u);
                return NULL;
        }
        return u;
}

bool url_scheme_is(const char *url, const char *scheme) {
        _cleanup_(curl_url_cleanupp) CURLU *u = url_parse(url);
        _cleanup_(curl_freep) char *s = NULL;

        return u && curl_url_get(u, CURLUPART_SCHEME, &s, 0) == CURLUE_OK && strcasecmp(s, scheme) == 0;
}

int url_password(const char *url, char **ret) {
        _cleanup_(curl_url_cleanupp) CURLU *u = url_parse(url);
        _cleanup_(curl_freep) char *p = NULL;

        *ret = NULL;
        if (!u || curl_url_get(u, CURLUPART_PASSWORD, &p, 0) != CURLUE_OK || isempty(p))
                return 0;
        *ret = strdup(p);
        return *ret ? 0 : -ENOMEM;
}

/* scheme://host:port, host lowercased, the default port filled in; NULL if url cannot be parsed. */
static char *url_origin(const char *url) {
        _cleanup_(curl_url_cleanupp) CURLU *u = url_parse(url);
        _cleanup_(curl_freep) char *scheme = NULL, *host = NULL, *port = NULL;
        char *s;

        if (!u || curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
                return NULL;
        for (char *p = host; *p; p++)
                *p = (char) tolower((unsigned char) *p);
        if (asprintf(&s, "%s://%s:%s", scheme, host, port) < 0)
                return NULL;
        return s;
}

bool url_same_origin(const char *a, const char *b) {
        _cleanup_free_ char *oa = url_origin(a), *ob = url_origin(b);

        return oa && ob && streq(oa, ob);
}

int url_file_name(const char *url, char **ret) {
        _cleanup_(curl_url_cleanupp) CURLU *u = url_parse(url);
        _cleanup_(curl_freep) char *path = NULL, *name = NULL;
        const char *seg;
        CURLUcode rc;
        char *s;
        int n = 0;

        if (!u)
                return -EINVAL;
        rc = curl_url_get(u, CURLUPART_PATH, &path, 0);
        if (rc == CURLUE_OUT_OF_MEMORY)
                return -ENOMEM;
        if (rc != CURLUE_OK)
                return -EINVAL;
        /* split before decoding: an encoded "%2F" is part of the name */
        seg = strrchr(path, '/');
        seg = seg ? seg + 1 : path;
        name = curl_easy_unescape(NULL, seg, 0, &n);
        if (!name)
                return -ENOMEM;
        s = strndup(name, (size_t) n);
        if (!s)
                return -ENOMEM;
        *ret = s;
        return 0;
}
