/* SPDX-License-Identifier: MIT */
#pragma once

/* The rule by which a URL's query is shown (daemon/url.c for hydrad's display form, field.c for the URLs quoted in
 * validation errors, in hydrad and hydractl alike): signed and token URLs carry their credentials there, so every
 * value becomes URL_REDACTED with the names and their order kept; an item without '=' may be a bare token and is
 * replaced whole; an empty value stays empty. */

#define URL_REDACTED "REDACTED"

/* The rule applied to a bare query string (without its '?'). Returns a new string, or NULL if query is NULL or on
 * ENOMEM. */
char *url_redact_query(const char *query);
