/* SPDX-License-Identifier: MIT */
#pragma once

/* The canonical name of a gRPC status code ("INVALID_ARGUMENT"), or "UNKNOWN" for a code outside 0..16. One table
 * for hydrad's server (api.c), its containerd probe (grpc_probe.c) and hydractl (rpc.c); the codes are gRPC's
 * stable wire values (doc/statuscodes.md), so this file needs no gRPC header. */
const char *grpc_status_name(int code);
