/* SPDX-License-Identifier: MIT */
#pragma once

/* `hydractl console ROLE`: the terminal attached to a VM's serial console, through hydrad's console.sock (not
 * through gRPC: bytes both ways, as long as the user likes).
 *
 * With a terminal on stdin: raw mode (restored on every way out, SIGINT, SIGTERM and SIGHUP included: they
 * detach), everything typed goes to the guest, Ctrl-] (0x1d) detaches. "Connected to ROLE console (Ctrl-] to
 * detach)" and "Detached" go to stderr.
 *
 * Without one (stdin a pipe or a file): copies stdin to the guest until EOF, then keeps printing the guest's output
 * for linger_seconds (0: not at all; < 0: until the console closes), so that a script can run
 *         printf 'uname -a\n' | hydractl console host --linger 2
 * Nothing is printed but the guest's output.
 *
 * Returns an exit status: 0 when detached, at EOF, when the linger time is over or the console was closed by
 * hydrad; 1 when the console socket cannot be reached (the message names the path and says why) or fails. */
int console_attach(const char *socket_path, const char *role, double linger_seconds);
