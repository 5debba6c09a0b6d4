/* SPDX-License-Identifier: MIT */
/* Must not build: base/ is below qemu/ (CMakeLists.txt, test layers/base_sees_qemu). */
#include "qmp.h"
