/* SPDX-License-Identifier: MIT */
/* Must not build: provision/ and net/ are siblings, neither sees the other (test layers/provision_sees_net). */
#include "proxy.h"
