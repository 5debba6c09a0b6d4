#!/bin/bash
# The e2e tier alone: builds Hydra (build/, -Werror), then runs tests/e2e/test_*.py through ctest (label e2e).
# The first run builds the Debian guest image, the guest's package source and the container image (about 8
# minutes, cached in /var/cache/hydra-e2e: a rerun with the same Debian package versions builds nothing).
set -euo pipefail
cd "$(dirname "$0")/../.."

echo "=== build (build/, -Werror)"
cmake -S . -B build -G Ninja -DHYDRA_WERROR=ON -DHYDRA_GUEST_DIR="$PWD/build/guest" >/dev/null
cmake --build build

echo "=== e2e tests (a real Debian guest, TCG)"
ctest --test-dir build -L e2e --verbose
