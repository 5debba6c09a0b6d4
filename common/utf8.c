/* SPDX-License-Identifier: MIT */
#include <stdint.h>

#include "utf8.h"

bool utf8_valid(const void *s, size_t n) {
        const unsigned char *p = s, *end = p + n;

        while (p < end) {
                size_t k;
                uint32_t c;

                if (*p < 0x80) {
                        p++;
                        continue;
                }
                if ((*p & 0xe0) == 0xc0)
                        k = 1, c = *p & 0x1f;
                else if ((*p & 0xf0) == 0xe0)
                        k = 2, c = *p & 0x0f;
                else if ((*p & 0xf8) == 0xf0)
                        k = 3, c = *p & 0x07;
                else
                        return false; /* a continuation byte first, or 0xf8-0xff */
                p++;
                if ((size_t) (end - p) < k)
                        return false;
                for (size_t i = 0; i < k; i++, p++) {
                        if ((*p & 0xc0) != 0x80)
                                return false;
                        c = (c << 6) | (*p & 0x3f);
                }
                if ((k == 1 && c < 0x80) || (k == 2 && c < 0x800) || (k == 3 && c < 0x10000) || c > 0x10ffff ||
                    (c >= 0xd800 && c <= 0xdfff))
                        return false;
        }
        return true;
}
