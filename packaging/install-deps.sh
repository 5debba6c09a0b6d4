#!/bin/bash
# Installs what Hydra needs to build, run and test on Debian 12, from Debian's packages. Run as root.
set -euo pipefail

PACKAGES=(
    # build
    gcc make ninja-build cmake pkg-config
    libgrpc-dev protobuf-c-compiler libprotobuf-c-dev protobuf-compiler
    libsystemd-dev libjansson-dev libcurl4-openssl-dev libinih-dev check
    libarchive-dev libssl-dev libcrypt-dev
    # run (qemu-system-arm: aarch64 guests, and test_qemu_argv's real-QEMU checks of the aarch64 goldens)
    qemu-system-x86 qemu-system-arm qemu-utils genisoimage
    # the firmware start-vm.sh boots x86_64 guests with (`hydractl register --from-env` names it)
    ovmf
    # tests: the tiny guest (apt-get download'ed kernel + busybox), the Python client, tools the tests use
    kmod cpio python3-grpcio python3-protobuf python3-grpc-tools iproute2 procps util-linux
    cloud-init curl
    # tests/installer: packaging/install_crismux.sh is checked with shellcheck, and downloads with wget (and curl)
    shellcheck wget
    # the containerd readiness probe's unit test runs a real containerd
    containerd
    # e2e tier (tests/e2e/): build-image makes a Debian guest image without loop mounts (mmdebstrap, sfdisk from
    # fdisk, an ESP filled with mtools holding grub-mkstandalone's EFI binary, mke2fs -d, qemu-img, xz);
    # boot-check boots it with ovmf and a genisoimage seed (both above); build-oci makes the guest's container
    # image (umoci, busybox-static's root file system) and checks it with containerd's ctr (above);
    # build-apt-repo indexes the guest's local package source (dpkg-scanpackages, apt-ftparchive); the tests ssh
    # into the guest
    mmdebstrap mtools grub-efi-amd64-bin fdisk e2fsprogs xz-utils
    umoci busybox-static
    dpkg-dev apt-utils openssh-client
    # the Debian package (packaging/build-deb.sh, tests/packaging/test_deb.sh): debhelper builds it (dpkg-dev, above,
    # has dpkg-buildpackage), lintian checks it; the pkg-config files of systemd and bash-completion say where the
    # units and the completion go; the test renders the man pages (man-db, groff-base) and runs systemd-analyze
    debhelper lintian bash-completion systemd man-db groff-base
    # packaging/container: tests/packaging/test_container.sh builds and runs the image with podman (on an
    # mmdebstrap base, above); the charts' test needs python3-yaml
    podman netavark python3-yaml
)

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: run as root (apt-get install)" >&2
    exit 1
fi
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The guest builder downloads linux-image-amd64 and busybox-static: it needs current package lists either way.
echo "install-deps: apt-get update"
apt-get update -qq
if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all dependencies present"
