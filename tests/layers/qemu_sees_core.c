/* SPDX-License-Identifier: MIT */
/* Must not build: qemu/ is below core/ (CMakeLists.txt, test layers/qemu_sees_core). */
#include "vm.h"
