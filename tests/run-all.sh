#!/bin/bash
# Builds Hydra (warnings are errors), then runs every test: Check unit tests, the Debian package's and the
# container image's checks (tests/packaging/), the integration tests on real QEMU under TCG (ctest), the e2e tier (tests/e2e: a
# real Debian guest provisioned by hydrad runs containers for the host; its images are cached in
# /var/cache/hydra-e2e), then the integration tests once more against an ASan/UBSan build of hydrad and hydractl,
# where a leak or a memory error fails the test.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
GUEST=$SRC/build/guest

echo "=== build (build/, -Werror)"
cmake -S . -B build -G Ninja -DHYDRA_WERROR=ON -DHYDRA_GUEST_DIR="$GUEST" >/dev/null
cmake --build build

echo "=== unit tests"
ctest --test-dir build -L unit -j2 --output-on-failure

echo "=== package (the .deb built, listed, extracted, verified, lintian, installed under a real systemd in a"
echo "    container; the container image built and run with podman; packaging/README.md)"
ctest --test-dir build -L package --output-on-failure

echo "=== integration tests (real QEMU, TCG)"
ctest --test-dir build -L integration --output-on-failure

echo "=== e2e tests (a real Debian guest, TCG; tests/e2e/README.md)"
ctest --test-dir build -L e2e --verbose

echo "=== build (build-asan/, AddressSanitizer + UBSan)"
cmake -S . -B build-asan -G Ninja -DHYDRA_WERROR=ON -DHYDRA_ASAN=ON -DCMAKE_BUILD_TYPE=Debug \
    -DHYDRA_GUEST_DIR="$GUEST" >/dev/null
cmake --build build-asan

echo "=== all tests again under ASan: unit and integration"
ctest --test-dir build-asan -L unit -j2 --output-on-failure
ctest --test-dir build-asan --output-on-failure -L integration
