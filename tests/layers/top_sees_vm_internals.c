/* SPDX-License-Identifier: MIT */
/* Must not build: struct Vm is private to core/ (CMakeLists.txt, test layers/top_sees_vm_internals). */
#include "vm-internal.h"
