/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* How a URL is shown, or stored anywhere but the spec itself (logs, errors, events, replies, cache metadata):
 * signed and token URLs carry their credentials in the query (?private_token=..., ?X-Amz-Signature=...), so
 *     - the value of every query parameter becomes URL_REDACTED, names and order kept, so that a person can still
 *       tell which URL it is: ?private_token=REDACTED&X-Amz-Expires=REDACTED;
 *     - a parameter without '=' may be a bare token: it is replaced whole; an empty value stays empty;
 *     - the fragment is dropped, and so is any user:password@.
 * Parsed with libcurl's URL API; what libcurl cannot parse is cut by hand the same way (everything after the first
 * '?' redacted, after the first '#' dropped). Pure: no I/O, no logging. */

#include "redact.h" /* URL_REDACTED, url_redact_query */

/* The display form of url. Returns a new string, or NULL if url is NULL or on ENOMEM. */
char *url_display(const char *url);

/* For text a library wrote that may quote the URL (libcurl's error buffer): every occurrence of url's raw query in
 * text (NUL-terminated, in a buffer of size bytes) is replaced with its redacted form, cut short if the result no
 * longer fits. Returns 0, or -ENOMEM: then text is cut before the first occurrence instead. */
int url_scrub_text(char *text, size_t size, const char *url);

/* URLs taken apart by libcurl's URL API (curl_url_set/get), as libcurl itself will read them when it fetches.
 * A URL libcurl cannot parse has no scheme, password, origin or file name here. Pure: no I/O, no logging. */

/* true if libcurl reads url's scheme as scheme (compared without case). */
bool url_scheme_is(const char *url, const char *scheme);

/* The password of url's user:password@, as written (to scrub it from text that may quote the URL). Returns 0 with
 * *ret NULL when there is none or url cannot be parsed, or -ENOMEM. */
int url_password(const char *url, char **ret);

/* Scheme, host (without case) and port (the scheme's default filled in) are the same. false if either URL cannot
 * be parsed: never the same origin. */
bool url_same_origin(const char *a, const char *b);

/* The last segment of url's path, percent-decoded: the name a SUMS file lists ("" when the path ends in '/').
 * Returns 0, -EINVAL if url cannot be parsed, or -ENOMEM. */
int url_file_name(const char *url, char **ret);
