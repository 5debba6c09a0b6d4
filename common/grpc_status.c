/* SPDX-License-Identifier: MIT */
#include "grpc_status.h"
#include "macro.h"

const char *grpc_status_name(int code) {
        static const char *const names[] = {
                "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
        };

        return code >= 0 && (size_t) code < ELEMENTSOF(names) ? names[code] : "UNKNOWN";
}
