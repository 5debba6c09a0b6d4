/* SPDX-License-Identifier: MIT */
#pragma once

/* The protobuf side of the API: core objects <-> hydra.v1 messages, and the stored spec's codec (spec.pb is the
 * packed VmSpec message). With api.c, the only daemon files that see generated protobuf types; linked into hydrad,
 * not into the core. */

#include <stdbool.h>

#include "hydra/v1/hydra.pb-c.h"
#include "manager.h"
#include "vm.h"

/* Protobuf views of core objects: strings are borrowed, arrays owned here. */
typedef struct SpecPb {
        Hydra__V1__VmSpec spec;
        Hydra__V1__KernelBoot kernel;
        Hydra__V1__Firmware firmware;
        Hydra__V1__Source image;
        Hydra__V1__BareKernel bare;
        Hydra__V1__Source artifact;
        Hydra__V1__Guest guest;
        Hydra__V1__Software software;
        Hydra__V1__Network network;
        Hydra__V1__Shares shares;
        Hydra__V1__Devices devices;
        Hydra__V1__Supervision supervision;
        Hydra__V1__Resources resources;
        Hydra__V1__PortForward *forwards;
        Hydra__V1__PortForward **forward_ptrs;
        Hydra__V1__Share *extra;
        Hydra__V1__Share **extra_ptrs;
        char **shown;            /* the URLs as a reply shows them (url_display) */
        size_t n_shown;
        char **extra_debs;
} SpecPb;

typedef struct VmPb {
        Hydra__V1__Vm vm;
        Hydra__V1__ExitInfo exit;
        Hydra__V1__Progress progress;
        Hydra__V1__Drive *drives;
        Hydra__V1__Drive **drive_ptrs;
        SpecPb spec;
} VmPb;

Hydra__V1__VmState state_to_pb(VmState s);
Hydra__V1__Role role_to_pb(Role r);
/* -EINVAL for ROLE_UNSPECIFIED or an unknown value. */
int role_from_pb(Hydra__V1__Role r, Role *ret);
/* A borrowed string for a message field: "" for NULL. */
char *pb_str(const char *s);

/* A protobuf view of spec (strings borrowed). redact: secrets shown as "(set)" and URLs with query values hidden,
 * for replies; false for the stored spec. Free with spec_pb_done() also on failure. Returns 0 or -ENOMEM. */
int spec_pb_init(SpecPb *p, const VmSpec *s, bool redact);
void spec_pb_done(SpecPb *p);
/* A core spec from a message; INVALID_ARGUMENT-style errors name the field. */
int spec_from_pb(const Hydra__V1__VmSpec *p, VmSpec *ret, HydraError *err);

/* A reply's view of vm (its spec redacted). Free with vm_pb_done() also on failure. */
int vm_pb_init(VmPb *p, const Vm *vm);  /* from vm_get_status(); the strings are borrowed */
void vm_pb_done(VmPb *p);

/* spec.pb: the packed VmSpec, every string field checked (UTF-8, no NUL) before it is unpacked. */
extern const SpecCodec api_spec_codec;
