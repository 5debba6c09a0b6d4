/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>

#include "error.h"
#include "vm.h"

/* hydrad as a systemd service (systemd/hydrad.service, hydrad.socket): the socket systemd passes, and the STATUS=
 * line `systemctl status hydrad` shows. Without systemd none of this is asked for, and hydrad binds its own socket. */

/* The API socket systemd passed ($LISTEN_FDS, which is unset here so that no child sees it): *ret_fd gets it
 * (non-blocking, close-on-exec), or -EBADF when hydrad was not socket-activated. Anything but exactly one
 * listening unix stream socket is an error naming what was passed and what hydrad.socket must say; every passed
 * fd is closed then. A socket at another path than socket_path is taken, with a warning. */
int service_take_activated_socket(const char *socket_path, int *ret_fd, HydraError *err);

/* "host: running, ready; isolated: stopped", one entry per role in sts (n of them): registered VMs by state,
 * "ready" when the VM's readiness probe passed; "isolated: not registered". Pure. */
void service_status_text(const VmStatus *sts, size_t n, char *buf, size_t size);
