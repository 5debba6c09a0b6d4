/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>

/* Whether the n bytes at s are well-formed UTF-8 as protobuf requires of a string field (RFC 3629): no overlong
 * forms, no surrogates (U+D800-U+DFFF), nothing above U+10FFFF, no sequence cut short. A NUL byte is valid UTF-8
 * (U+0000); callers that cannot carry one (C strings) look for it themselves. */
bool utf8_valid(const void *s, size_t n);
