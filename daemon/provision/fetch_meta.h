/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The pure part of the downloader (fetch.c): checksums and SUMS files, response headers, the cache key, and the
 * cache entry's meta.json as data. No I/O, no logging, no libcurl handle: each function turns its arguments into
 * its result, so that tests/test_fetch_meta.c checks them one by one. fetch.c reads and writes the files (through
 * fetch_sink.c), this file says what is in them. */

typedef enum DigestAlgo {
        DIGEST_NONE,
        DIGEST_SHA256,
        DIGEST_SHA512,
} DigestAlgo;

#define FETCH_HEX_MAX 129 /* a SHA-512 in hex, and its NUL */

/* "sha256", "sha512"; NULL for DIGEST_NONE. */
const char *digest_algo_to_string(DigestAlgo a);

/* Lowercase hex of n bytes into out (2n+1 bytes). */
void fetch_hex_encode(const unsigned char *d, size_t n, char *out);

/* "sha256:HEX", "sha512:HEX", or a bare HEX whose length says which; the hex lowercased into ret_hex.
 * Returns 0 or -EINVAL. */
int fetch_parse_checksum(const char *s, DigestAlgo *ret_algo, char ret_hex[static FETCH_HEX_MAX]);

/* Looks name up in a SHA256SUMS / SHA512SUMS text: "HEX  NAME", "HEX *NAME" (GNU), or "SHA256 (NAME) = HEX"
 * (BSD), "./NAME" the same as NAME. The algorithm follows from the digest's length. Returns 0, or -ENOENT if
 * name is not listed with a digest of a known length. */
int fetch_sums_lookup(const char *text, size_t len, const char *name, DigestAlgo *ret_algo,
                      char ret_hex[static FETCH_HEX_MAX]);

/* The value of a header line "Name: value\r\n" (name without case, blanks trimmed) as a new string; NULL if the
 * line is another header's (or on ENOMEM). */
char *fetch_header_value(const char *line, size_t len, const char *name);

/* The first byte of a Content-Range value "bytes FIRST-LAST/TOTAL"; -1 if it has none. */
int64_t fetch_content_range_start(const char *value);

/* The cache key of a URL: the SHA-256 (hex) of the URL as written without its user:password@ (the query stays:
 * it may name another file; hashed, no token shows). Into out[65]. Returns 0 or -ENOMEM. */
int fetch_cache_key(const char *url, char out[static 65]);

/* --- meta.json: a JSON object ---
 *     url            the URL as url_display() shows it
 *     etag, last_modified   validators of the response data came from (revalidation)
 *     size, sha256, sha512  of data (sha512 only when one was expected)
 *     time           when data was downloaded (seconds since the epoch)
 *     part           {etag, last_modified} of the response data.part came from (If-Range on resume) */

/* The object in text, or an empty object when text is not one (a damaged file is a cache miss). NULL: ENOMEM. */
json_t *fetch_meta_parse(const void *text, size_t len);

/* The object describes a data file of data_size bytes: it has a sha256 and that size. */
bool fetch_meta_describes(const json_t *meta, uint64_t data_size);

/* The object was written by an older hydrad, with the URL's query values, which must not stay on disk: it has a
 * "url" other than url_shown. */
bool fetch_meta_url_stale(const json_t *meta, const char *url_shown);

/* The validator to send as If-Range when resuming data.part: part's strong ETag, else its Last-Modified. NULL:
 * none (resume without one). Borrowed from meta. */
const char *fetch_meta_if_range(const json_t *meta);

/* Sets "part" to what the response now being written to data.part said (either may be NULL). Returns 0 or
 * -ENOMEM. */
int fetch_meta_set_part(json_t *meta, const char *etag, const char *last_modified);

/* The object of a freshly verified data file. sha512 may be NULL or "". NULL on ENOMEM. */
json_t *fetch_meta_new(const char *url_shown, const char *etag, const char *last_modified, uint64_t size,
                       const char *sha256, const char *sha512, int64_t time);

/* A string member, borrowed; NULL if absent or not a string. */
const char *fetch_meta_string(const json_t *meta, const char *key);

/* The text to write: indented, keys sorted. NULL on ENOMEM. */
char *fetch_meta_format(const json_t *meta);
