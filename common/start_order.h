/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

/* The order to start n VMs in when some start after another (supervision.start_after): after[i] is the index of
 * the VM that i starts after, or -1 for none. ret gets the n indexes, every VM after the one it names, otherwise in
 * index order; stopping goes in the reverse order. Returns 0, -ELOOP when the names form a cycle (a VM naming itself
 * included), -EINVAL for an index out of range or n > 64. Pure, and header-only: hydrad (autostart, the stop at
 * exit, a registration's cycle check) and hydractl (start --all, stop --all) share it. */
static inline int start_order(const int *after, size_t n, size_t *ret) {
        uint64_t placed = 0;
        size_t k = 0;

        if (n > 64)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (after[i] < -1 || after[i] >= (int) n)
                        return -EINVAL;
        while (k < n) {
                size_t before = k;

                for (size_t i = 0; i < n; i++) {
                        if (placed & (UINT64_C(1) << i))
                                continue;
                        if (after[i] >= 0 && !(placed & (UINT64_C(1) << after[i])))
                                continue;
                        ret[k++] = i;
                        placed |= UINT64_C(1) << i;
                }
                if (k == before)
                        return -ELOOP;
        }
        return 0;
}
