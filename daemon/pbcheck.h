/* SPDX-License-Identifier: MIT */
#pragma once

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

#include "error.h"

/* What protobuf-c does not check on unpacking: every string field must be UTF-8 (the protobuf spec; grpcio and
 * the other conformant clients refuse to decode a message holding anything else, so one stored bad string would
 * break GetVm/ListVms for everybody), and must not hold a NUL byte (protobuf-c hands a string to C as char *:
 * "a\0b" would silently become "a").
 *
 * Generic over descriptors: it walks the wire bytes with the message's ProtobufCMessageDescriptor, into message
 * fields, and knows no message of ours. Only the protobuf glue (daemon/api.c: requests and the stored spec.pb) uses
 * it; the core never includes protobuf-c. Pure: no I/O, no logging. */

/* Checks the packed message of type desc in data/size, before protobuf_c_message_unpack().
 * Returns 0 when every string field is well-formed UTF-8 without NUL bytes; -EINVAL with err naming the field by
 * its dotted path from desc ("spec.guest.hostname", "spec.guest.ssh_authorized_keys[1]") and what is wrong;
 * -EBADMSG with err saying so when the bytes are not a well-formed protobuf encoding (unpacking them would fail
 * too). Fields the descriptor does not know are skipped, as unpacking does. */
int pb_check_strings(const ProtobufCMessageDescriptor *desc, const void *data, size_t size, HydraError *err);
