/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

#include "error.h"

/* The longest value quoted in a message, before escaping; HydraError's buffer is 1 KiB. */
#define FIELD_QUOTE_MAX 96U
#define FIELD_QUOTE_SIZE (4 * FIELD_QUOTE_MAX + 4)

/* A value for a message: control characters, quotes and backslashes escaped (a message is one log line), bytes
 * above 0x7e escaped (it may end up in a proto3 string, which must be UTF-8), long values cut with "...". */
const char *field_quote(char buf[static FIELD_QUOTE_SIZE], const char *s);
/* The same for a URL, shown much as daemon/url.h shows one: query values replaced by REDACTED (names kept), as is
 * a fragment (kept as "#REDACTED", so that a message about a character in it still makes sense); signed URLs carry
 * their credentials in the query. */
const char *field_quote_url(char buf[static FIELD_QUOTE_SIZE], const char *url);
/* "','" for a printable ASCII character, "a space", "a newline", "byte 0xc3" otherwise (half a UTF-8 sequence
 * must not reach a log). */
const char *field_describe_char(char buf[static 16], char c);

/* One rule per spec field that more than one place checks: hydrad's spec validation (daemon/spec.c, at
 * RegisterVm), the cloud-init renderer (daemon/cloudinit.c, at StartVm and PlanVm) and hydractl's spec file and
 * environment readers (client/specfile.c, client/fromenv.c) all call these, so what one accepts the others
 * accept (issue 9: RegisterVm used to accept values StartVm then refused). Pure: no I/O, no allocation.
 *
 * Each returns 0, or -EINVAL with err naming the field and the value (quoted, escaped) and saying what is
 * allowed. field is the name the message starts with, e.g. "software.extra_debs[0]". */

/* A URL the guest downloads (software.extra_debs, software.csi_grpc_proxy_url): http:// or https://, a host,
 * only URL characters (RFC 3986 unreserved, reserved and '%'), no credentials before the host. It is passed to
 * wget in the guest, and the extra debs travel '$'-separated in one argument of install_debs.sh, so quotes,
 * blanks, '$', '{', '}', '|', '\', '^' and '`' are refused: percent-encode them. */
int field_check_guest_url(const char *field, const char *url, HydraError *err);

/* A mount point in the guest (shares.extra[].guest_path): an absolute path below / of letters, digits and
 * '/', '.', '_', '+', '-', '@', ':', '~', no '.' or '..' component. It is written to /etc/fstab, whose fields
 * split at blanks, where '#' starts a comment and '\' escapes. */
int field_check_guest_path(const char *field, const char *path, HydraError *err);

/* RFC 1123 host name (guest.hostname): labels of 1-63 letters, digits and '-', not starting or ending with '-',
 * joined by single dots (no empty label, no trailing dot), at most 253 characters. */
int field_check_hostname(const char *field, const char *hostname, HydraError *err);

/* A Linux user name (guest.username): 1-32 of a-z, 0-9, '_', '-', starting with a letter or '_'. */
int field_check_username(const char *field, const char *username, HydraError *err);

/* A crypt(3) hash (guest.password_hash): "$id$...", 4-512 of letters, digits and ". / $ = + -". The value is
 * never quoted back. */
int field_check_password_hash(const char *field, const char *hash, HydraError *err);

/* One authorized_keys line (guest.ssh_authorized_keys[]): UTF-8, no control characters (a line break would add
 * a line), at most 16384 bytes, starting with ssh-, ecdsa- or sk-. */
int field_check_ssh_key(const char *field, const char *key, HydraError *err);

/* A k3s release (software.k3s_version): 1-64 of letters, digits, '.', '+', '_', '-', not starting with '-' (it
 * reaches the installer as INSTALL_K3S_VERSION), not "." or "..". */
int field_check_k3s_version(const char *field, const char *version, HydraError *err);

/* A Debian package name (software.kernel_package): 2-128 of a-z, 0-9, '+', '.', '-', starting with a-z or 0-9. */
int field_check_package(const char *field, const char *name, HydraError *err);

/* A container image reference (software.sandbox_image), e.g. registry.k8s.io/pause:3.6: 1-255 of letters, digits
 * and '.', '_', '-', '/', ':', '@', starting with a letter or digit. It is written to containerd's TOML config. */
int field_check_image_ref(const char *field, const char *ref, HydraError *err);

/* A SHA-256 digest as 64 hex digits (software.crismux_sha256). */
int field_check_sha256(const char *field, const char *hex, HydraError *err);

/* A dotted-quad IPv4 literal (network.guest_ip, .gateway, .dns). */
int field_check_ipv4(const char *field, const char *value, HydraError *err);

/* A unicast MAC address, xx:xx:xx:xx:xx:xx in hex digits of either case (network.mac). */
int field_check_mac(const char *field, const char *value, HydraError *err);
