/* SPDX-License-Identifier: MIT */
#pragma once

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
