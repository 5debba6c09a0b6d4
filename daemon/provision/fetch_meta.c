/* SPDX-License-Identifier: MIT */
/* Checksums, SUMS files, response headers, the cache key and meta.json as data: see fetch_meta.h. */
#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fetch_meta.h"
#include "macro.h"

static const char *const digest_algo_table[] = {
        [DIGEST_NONE] = NULL,
        [DIGEST_SHA256] = "sha256",
        [DIGEST_SHA512] = "sha512",
};

const char *digest_algo_to_string(DigestAlgo a) {
        return (size_t) a < ELEMENTSOF(digest_algo_table) ? digest_algo_table[a] : NULL;
}

void fetch_hex_encode(const unsigned char *d, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[d[i] >> 4];
                out[2 * i + 1] = digits[d[i] & 15];
        }
        out[2 * n] = '\0';
}

static DigestAlgo digest_algo_from_hex_len(size_t n) {
        return n == 64 ? DIGEST_SHA256 : n == 128 ? DIGEST_SHA512 : DIGEST_NONE;
}

/* Copies a hex digest of a known length, lowercased, into out. Returns the algorithm or DIGEST_NONE. */
static DigestAlgo hex_digest_copy(const char *hex, size_t n, char out[static FETCH_HEX_MAX]) {
        DigestAlgo a = digest_algo_from_hex_len(n);

        if (a == DIGEST_NONE)
                return DIGEST_NONE;
        for (size_t i = 0; i < n; i++) {
                if (!isxdigit((unsigned char) hex[i]))
                        return DIGEST_NONE;
                out[i] = (char) tolower((unsigned char) hex[i]);
        }
        out[n] = '\0';
        return a;
}

int fetch_parse_checksum(const char *s, DigestAlgo *ret_algo, char ret_hex[static FETCH_HEX_MAX]) {
        const char *colon = strchr(s, ':');
        DigestAlgo a, named = DIGEST_NONE;

        if (colon) {
                size_t l = (size_t) (colon - s);
                if (l == 6 && strncasecmp(s, "sha256", 6) == 0)
                        named = DIGEST_SHA256;
                else if (l == 6 && strncasecmp(s, "sha512", 6) == 0)
                        named = DIGEST_SHA512;
                else
                        return -EINVAL;
                s = colon + 1;
        }
        a = hex_digest_copy(s, strlen(s), ret_hex);
        if (a == DIGEST_NONE || (named != DIGEST_NONE && named != a))
                return -EINVAL;
        *ret_algo = a;
        return 0;
}

int fetch_sums_lookup(const char *text, size_t len, const char *name, DigestAlgo *ret_algo,
                      char ret_hex[static FETCH_HEX_MAX]) {
        const char *p = text, *end = text + len;
        size_t name_len = strlen(name);

        while (p < end) {
                const char *eol = memchr(p, '\n', (size_t) (end - p));
                const char *le = eol ? eol : end, *hex, *fname;
                size_t hex_len, fname_len;

                if (le > p && le[-1] == '\r')
                        le--;
                while (p < le && (*p == ' ' || *p == '\t'))
                        p++;

                if ((size_t) (le - p) > 8 && (strncmp(p, "SHA256 (", 8) == 0 || strncmp(p, "SHA512 (", 8) == 0)) {
                        /* BSD: the name ends at the last ") = " */
                        const char *sep = NULL;
                        for (const char *q = p + 8; q + 4 <= le; q++)
                                if (memcmp(q, ") = ", 4) == 0)
                                        sep = q;
                        if (!sep)
                                goto next;
                        fname = p + 8;
                        fname_len = (size_t) (sep - fname);
                        hex = sep + 4;
                        hex_len = (size_t) (le - hex);
                } else {
                        hex = p;
                        hex_len = 0;
                        while (hex + hex_len < le && isxdigit((unsigned char) hex[hex_len]))
                                hex_len++;
                        fname = hex + hex_len;
                        if (le - fname < 2 || fname[0] != ' ' || (fname[1] != ' ' && fname[1] != '*'))
                                goto next;
                        fname += 2;
                        fname_len = (size_t) (le - fname);
                }
                if (fname_len >= 2 && fname[0] == '.' && fname[1] == '/') {
                        fname += 2;
                        fname_len -= 2;
                }
                if (fname_len == name_len && memcmp(fname, name, name_len) == 0) {
                        DigestAlgo a = hex_digest_copy(hex, hex_len, ret_hex);
                        if (a != DIGEST_NONE) {
                                *ret_algo = a;
                                return 0;
                        }
                }
        next:
                if (!eol)
                        break;
                p = eol + 1;
        }
        return -ENOENT;
}

char *fetch_header_value(const char *line, size_t len, const char *name) {
        size_t nl = strlen(name);
        const char *v, *e;

        if (len <= nl || strncasecmp(line, name, nl) != 0 || line[nl] != ':')
                return NULL;
        v = line + nl + 1;
        e = line + len;
        while (v < e && (*v == ' ' || *v == '\t'))
                v++;
        while (e > v && (e[-1] == '\r' || e[-1] == '\n' || e[-1] == ' ' || e[-1] == '\t'))
                e--;
        return strndup(v, (size_t) (e - v));
}

int64_t fetch_content_range_start(const char *value) {
        unsigned long long first;

        if (!value || sscanf(value, "bytes %llu-", &first) != 1 || first > INT64_MAX)
                return -1;
        return (int64_t) first;
}

/* The key is made of the URL as written, by hand rather than by libcurl's URL API: curl_url_get() gives the URL
 * back normalized (a "/" path added, the scheme and host's case, encodings), which would change the key of
 * entries an older hydrad made, and download all of them again. Only the user:password@ is cut: after "://",
 * up to the last '@' before the path, query or fragment. */
int fetch_cache_key(const char *url, char out[static 65]) {
        _cleanup_free_ char *key = NULL;
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned md_len = 0;
        const char *auth = strstr(url, "://"), *at = NULL;

        if (auth) {
                auth += 3;
                at = memrchr(auth, '@', strcspn(auth, "/?#"));
        }
        if (at ? asprintf(&key, "%.*s%s", (int) (auth - url), url, at + 1) < 0 : !(key = strdup(url)))
                return -ENOMEM;
        if (EVP_Digest(key, strlen(key), md, &md_len, EVP_sha256(), NULL) != 1 || md_len != 32)
                return -ENOMEM;
        fetch_hex_encode(md, md_len, out);
        return 0;
}

json_t *fetch_meta_parse(const void *text, size_t len) {
        json_t *m = text ? json_loadb(text, len, 0, NULL) : NULL;

        if (m && json_is_object(m))
                return m;
        json_decref(m);
        return json_object();
}

const char *fetch_meta_string(const json_t *meta, const char *key) {
        return json_string_value(json_object_get(meta, key));
}

bool fetch_meta_describes(const json_t *meta, uint64_t data_size) {
        const char *sha = fetch_meta_string(meta, "sha256");
        json_t *size = json_object_get(meta, "size");

        return sha && strlen(sha) == 64 && json_is_integer(size) && json_integer_value(size) >= 0 &&
               (uint64_t) json_integer_value(size) == data_size;
}

bool fetch_meta_url_stale(const json_t *meta, const char *url_shown) {
        const char *url = fetch_meta_string(meta, "url");

        return url && !streq(url, url_shown);
}

const char *fetch_meta_if_range(const json_t *meta) {
        json_t *part = json_object_get(meta, "part");
        const char *etag = fetch_meta_string(part, "etag");

        /* If-Range takes a strong validator only */
        return etag && strncmp(etag, "W/", 2) != 0 ? etag : fetch_meta_string(part, "last_modified");
}

static int set_string(json_t *o, const char *key, const char *value) {
        if (!value)
                return 0;
        return json_object_set_new(o, key, json_string(value)) < 0 ? -ENOMEM : 0;
}

int fetch_meta_set_part(json_t *meta, const char *etag, const char *last_modified) {
        json_t *part = json_object();

        if (!part || set_string(part, "etag", etag) < 0 || set_string(part, "last_modified", last_modified) < 0) {
                json_decref(part);
                return -ENOMEM;
        }
        return json_object_set_new(meta, "part", part) < 0 ? -ENOMEM : 0;
}

json_t *fetch_meta_new(const char *url_shown, const char *etag, const char *last_modified, uint64_t size,
                       const char *sha256, const char *sha512, int64_t time) {
        json_t *m = json_object();

        if (!m || set_string(m, "url", url_shown) < 0 || set_string(m, "etag", etag) < 0 ||
            set_string(m, "last_modified", last_modified) < 0 ||
            json_object_set_new(m, "size", json_integer((json_int_t) size)) < 0 ||
            set_string(m, "sha256", sha256) < 0 || set_string(m, "sha512", isempty(sha512) ? NULL : sha512) < 0 ||
            json_object_set_new(m, "time", json_integer((json_int_t) time)) < 0) {
                json_decref(m);
                return NULL;
        }
        return m;
}

char *fetch_meta_format(const json_t *meta) {
        return json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS);
}
