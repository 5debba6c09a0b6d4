#!/bin/bash
# build-guest.sh OUTDIR: build Hydra's tiny test guest from Debian packages.
#
# Outputs:
#   OUTDIR/vmlinuz      the Debian kernel (linux-image-amd64, resolved to its versioned package)
#   OUTDIR/initrd.img   a gzip'd newc cpio: busybox-static, the needed kernel modules, /init
#   OUTDIR/stamp        what was built from what (kernel and busybox package versions, module list)
#   OUTDIR/cache/       the downloaded .deb files (reused on the next run, also offline)
#
# Idempotent: when the three outputs exist and the stamp is newer than this script, nothing is done.
# HYDRA_GUEST_FORCE=1 rebuilds anyway. See tests/guest/README.md for what the guest does and prints.
#
# Environment (all optional):
#   HYDRA_GUEST_KERNEL_PKG   kernel (meta)package, default linux-image-amd64 (linux-image-cloud-amd64 works too)
#   HYDRA_GUEST_MODULES      space-separated module names to load, default: see DEFAULT_MODULES below
#   HYDRA_GUEST_FORCE        1 = rebuild even if up to date
#   HYDRA_GUEST_APT_UPDATE   0 = never run `apt-get update` when the package lists do not know the kernel
#
# Needs: apt, dpkg (dpkg-deb), kmod (depmod, modprobe), cpio, gzip, util-linux (flock), coreutils, findutils.
set -euo pipefail

usage() { echo "usage: $0 OUTDIR" >&2; exit 2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }
log() { echo "build-guest: $*" >&2; }

[ $# -eq 1 ] || usage
[ -n "$1" ] || usage

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
mkdir -p "$1"
OUT=$(readlink -f "$1")
CACHE="$OUT/cache"
KERNEL_PKG=${HYDRA_GUEST_KERNEL_PKG:-linux-image-amd64}
# virtio_pci: the PCI transport (a module in Debian's kernels, not built in); virtio_net, virtio_blk,
# virtio_rng, virtio_console: the devices Hydra attaches; button: the ACPI power button (a module);
# evdev: the /dev/input/event* nodes busybox acpid reads the button from; 9p + 9pnet_virtio: host
# shares (later); vmw_vsock_virtio_transport: vsock (later); pvpanic-mmio/-pci: the guest tells QEMU it
# panicked (GUEST_PANICKED). A trailing '?' marks a module as optional:
# skipped with a warning when the kernel has no such module (the cloud kernel has no 9p).
DEFAULT_MODULES="virtio_pci virtio_net virtio_blk virtio_rng virtio_console button evdev
    9p? 9pnet_virtio? vmw_vsock_virtio_transport? pvpanic-mmio? pvpanic-pci?"
MODULES=${HYDRA_GUEST_MODULES:-$DEFAULT_MODULES}

for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio gzip flock find; do
    command -v "$tool" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin"
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (install: apt-get install kmod cpio)"
done

# One builder at a time per OUTDIR (parallel ctest runs share it).
exec 9>"$OUT/.lock"
flock 9
rm -rf "$OUT"/.work.*   # left by a build that was killed

# What this build was asked for: a different kernel package or module list means a rebuild.
CONFIG_LINE="config=$KERNEL_PKG | $(echo $MODULES)"
up_to_date() {
    [ "${HYDRA_GUEST_FORCE:-0}" != 1 ] &&
        grep -qxF "$CONFIG_LINE" "$OUT/stamp" 2>/dev/null &&
        [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/stamp" ] &&
        [ "$OUT/stamp" -nt "$SCRIPT" ] && [ ! "$OUT/vmlinuz" -nt "$OUT/stamp" ] &&
        [ ! "$OUT/initrd.img" -nt "$OUT/stamp" ]
}
if up_to_date; then
    log "up to date: $OUT (HYDRA_GUEST_FORCE=1 rebuilds)"
    exit 0
fi

mkdir -p "$CACHE"
APT_OPTS=(-q)
# As root, apt drops to _apt to download, which cannot write into a root-owned cache dir.
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root)

# --- resolve package names -------------------------------------------------------------------------
# The metapackage (linux-image-amd64) depends on exactly one versioned image package.
resolve_kernel() {
    case "$KERNEL_PKG" in
    linux-image-[0-9]*) echo "$KERNEL_PKG"; return 0 ;;
    esac
    apt-cache depends "$KERNEL_PKG" 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\)$/\1/p' | head -n 1 || true
}
candidate() { # apt's candidate version of package $1, or nothing
    apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: //p' | grep -vxF '(none)' || true
}
cached_deb() { # newest cached .deb of package $1 (by dpkg version order), or nothing
    local best="" bestv="" f v
    for f in "$CACHE/$1"_*.deb; do
        [ -e "$f" ] || continue
        v=$(dpkg-deb -f "$f" Version) || continue
        if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$bestv"; then best=$f; bestv=$v; fi
    done
    [ -n "$best" ] && echo "$best"
    return 0
}

APT_UPDATED=0
apt_update_once() {
    [ "$APT_UPDATED" = 0 ] || return 1
    [ "${HYDRA_GUEST_APT_UPDATE:-1}" = 1 ] && [ "$(id -u)" = 0 ] || return 1
    APT_UPDATED=1
    log "package lists do not know $KERNEL_PKG: running apt-get update"
    apt-get -qq update >&2 || return 1
}

KPKG=$(resolve_kernel)
if [ -z "$KPKG" ] && apt_update_once; then KPKG=$(resolve_kernel); fi
if [ -z "$KPKG" ]; then
    # Offline and no package lists: fall back on whatever kernel image the cache holds.
    # linux-image-amd64 -> linux-image-6.1.0-NN-amd64_*.deb (not ...-NN-cloud-amd64_*.deb)
    flavour=${KERNEL_PKG#linux-image-}
    f=$(find "$CACHE" -maxdepth 1 -name 'linux-image-*.deb' -printf '%T@ %p\n' 2>/dev/null |
        grep -E "/linux-image-[0-9.]+-[0-9]+-${flavour}_[^/]*\.deb\$" | sort -rn | head -n 1 | cut -d' ' -f2- || true)
    [ -n "$f" ] || die "cannot resolve $KERNEL_PKG to a versioned linux-image package (run apt-get update)"
    KPKG=$(dpkg-deb -f "$f" Package)
    log "apt cannot resolve $KERNEL_PKG; using cached $KPKG"
fi

# --- download (into the cache) ---------------------------------------------------------------------
# Download a package unless the cache already holds the candidate version; offline, a cached one does.
fetch_deb() { # $1 package -> prints path of the .deb
    local pkg=$1 want f
    want=$(candidate "$pkg")
    if [ -n "$want" ]; then
        for f in "$CACHE/${pkg}"_*.deb; do
            [ -e "$f" ] || continue
            if [ "$(dpkg-deb -f "$f" Version)" = "$want" ]; then echo "$f"; return 0; fi
        done
        log "downloading $pkg $want"
        if (cd "$CACHE" && apt-get "${APT_OPTS[@]}" download "$pkg=$want" >&2); then
            cached_deb "$pkg"
            return 0
        fi
        log "download of $pkg failed"
    fi
    f=$(cached_deb "$pkg")
    [ -n "$f" ] || die "cannot download $pkg and no copy in $CACHE (run apt-get update?)"
    log "using cached $(basename "$f")"
    echo "$f"
}
if [ -z "$(candidate busybox-static)" ]; then
    apt_update_once || true
fi
KDEB=$(fetch_deb "$KPKG")
BDEB=$(fetch_deb busybox-static)
[ -f "$KDEB" ] || die "no kernel package file for $KPKG"
[ -f "$BDEB" ] || die "no busybox-static package file"
# Keep one version per package in the cache (a kernel .deb is ~70 MB).
for f in "$CACHE/$KPKG"_*.deb "$CACHE"/busybox-static_*.deb; do
    [ -e "$f" ] && [ "$f" != "$KDEB" ] && [ "$f" != "$BDEB" ] && rm -f "$f"
done
KVER_PKG=$(dpkg-deb -f "$KDEB" Version)
BVER_PKG=$(dpkg-deb -f "$BDEB" Version)

# --- extract -----------------------------------------------------------------------------------------
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
X="$WORK/x"      # extracted packages
R="$WORK/root"   # initramfs tree
mkdir -p "$X" "$R"
log "extracting $(basename "$KDEB") and $(basename "$BDEB")"
dpkg-deb -x "$KDEB" "$X"
dpkg-deb -x "$BDEB" "$X"

MODBASE=""
for d in "$X/lib/modules" "$X/usr/lib/modules"; do
    [ -d "$d" ] && MODBASE=$d && break
done
[ -n "$MODBASE" ] || die "no modules tree in $KDEB"
KVER=$(ls -1 "$MODBASE" | head -n 1)
[ -n "$KVER" ] || die "no kernel version directory under $MODBASE"
VMLINUZ=$(ls -1 "$X"/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$VMLINUZ" ] || VMLINUZ=$(ls -1 "$MODBASE/$KVER/vmlinuz" 2>/dev/null || true)
[ -n "$VMLINUZ" ] || die "no vmlinuz in $KDEB"
BUSYBOX="$X/bin/busybox"
[ -x "$BUSYBOX" ] || BUSYBOX="$X/usr/bin/busybox"
[ -x "$BUSYBOX" ] || die "no busybox binary in $BDEB"

# --- modules: resolve dependencies against the extracted tree -------------------------------------
# modprobe -d wants BASEDIR/lib/modules/KVER; the tree is already laid out that way.
DROOT=${MODBASE%/lib/modules}
depmod -b "$DROOT" "$KVER"
ORDER="$WORK/modules.order"
: >"$ORDER"
BUILTIN=""
SKIPPED=""
for m in $MODULES; do
    optional=0
    case "$m" in *\?) optional=1; m=${m%\?} ;; esac
    if ! deps=$(modprobe -d "$DROOT" -S "$KVER" --show-depends "$m" 2>&1); then
        [ "$optional" = 1 ] || die "module $m (kernel $KVER): $deps"
        log "warning: optional module $m not in kernel $KVER, skipped"
        SKIPPED="$SKIPPED $m"
        continue
    fi
    while read -r kind path _; do
        case "$kind" in
        insmod)
            rel=${path#"$DROOT"/}
            grep -qxF "/$rel" "$ORDER" || echo "/$rel" >>"$ORDER"
            ;;
        builtin) BUILTIN="$BUILTIN $path" ;;
        esac
    done <<<"$deps"
done

mkdir -p "$R"/{www,bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,var/log,etc/acpi/PWRF,lib/modules/"$KVER"}
while read -r rel; do
    src="$DROOT$rel"
    dst="$R${rel%.xz}"
    dst="${dst%.zst}"
    dst="${dst%.gz}"
    mkdir -p "$(dirname "$dst")"
    # busybox insmod does not decompress: store every module plain.
    case "$src" in
    *.ko.xz) xz -dc "$src" >"$dst" ;;
    *.ko.zst) zstd -qdc "$src" >"$dst" ;;
    *.ko.gz) gzip -dc "$src" >"$dst" ;;
    *) cp "$src" "$dst" ;;
    esac
done <"$ORDER"
sed -e 's/\.xz$//' -e 's/\.zst$//' -e 's/\.gz$//' "$ORDER" >"$R/etc/modules.order"

# --- busybox and the initramfs files -------------------------------------------------------------
cp "$BUSYBOX" "$R/bin/busybox"
chmod 0755 "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
if [ "$(id -u)" = 0 ]; then mknod -m 0600 "$R/dev/console" c 5 1; fi

echo "hydra-guest" >"$R/etc/hostname"
echo "hydra-guest" >"$R/www/index.html"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"

cat >"$R/init" <<'EOF'
#!/bin/sh
# Hydra test guest /init (PID 1), generated by tests/guest/build-guest.sh.
/bin/busybox mkdir -p /proc /sys /dev /run /tmp
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s
export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
hostname -F /etc/hostname
echo "hydra-guest: init started (kernel $(uname -r))"

fail=""
while read -r ko; do
    [ -n "$ko" ] || continue
    insmod "$ko" || fail="$fail $(basename "$ko" .ko)"
done </etc/modules.order
[ -z "$fail" ] || echo "hydra-guest: failed to load modules:$fail"

# ACPI power button -> /etc/acpi/PWRF/00000080 -> poweroff. acpid only opens the event devices that
# exist when it starts (event0, event1, ... up to the first missing one) and writes its pid file
# after opening them: wait for it so that "booted" means the power button works.
start_acpid() {
    rm -f /run/acpid.pid
    acpid -f -d -c /etc/acpi -p /run/acpid.pid &
    ACPID=$!
    n=0
    while [ ! -s /run/acpid.pid ] && [ $n -lt 100 ] && kill -0 $ACPID 2>/dev/null; do
        usleep 50000; n=$((n + 1))
    done
    [ -s /run/acpid.pid ] || echo "hydra-guest: acpid did not start"
}
start_acpid

if grep -qw hydra.net=off /proc/cmdline; then
    :
elif [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    if udhcpc -i eth0 -s /etc/udhcpc.script -q -f -n -t 5 -T 1 >/run/udhcpc.log 2>&1; then
        echo "hydra-guest: eth0 $(ip -4 -o addr show dev eth0 | awk '{print $4}')"
    else
        echo "hydra-guest: eth0 no DHCP lease"
    fi
fi
# A TCP service for port-forward checks: GET / on port 80 answers "hydra-guest".
if httpd -p 80 -h /www; then echo "hydra-guest: httpd on port 80"; fi
for b in /sys/block/vd*; do
    [ -e "$b" ] && echo "hydra-guest: disk $(basename "$b") $(cat "$b/size") sectors"
done

echo "hydra-guest: booted"
echo
echo "hydra-guest login: "

# hydra.shell=1 on the kernel command line: a root shell on the console (for a person at -serial stdio).
if grep -qw hydra.shell=1 /proc/cmdline; then
    (while :; do setsid cttyhack sh -l; sleep 1; done) &
fi

# Stay PID 1: keep acpid running, reap orphans.
while :; do
    wait $ACPID
    if ! kill -0 $ACPID 2>/dev/null; then
        echo "hydra-guest: acpid exited, restarting"
        sleep 1
        start_acpid
    fi
done
EOF
chmod 0755 "$R/init"

cat >"$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
# ACPI power button (QMP system_powerdown): power the guest off.
echo "hydra-guest: powering off" >/dev/console
exec poweroff -f
EOF
chmod 0755 "$R/etc/acpi/PWRF/00000080"

cat >"$R/etc/udhcpc.script" <<'EOF'
#!/bin/sh
# Minimal udhcpc hook: address, default route, resolver.
case "$1" in
deconfig) ip -4 addr flush dev "$interface"; ip link set "$interface" up ;;
bound|renew)
    ip -4 addr flush dev "$interface"
    ip -4 addr add "$ip/${mask:-24}" dev "$interface"
    for r in $router; do ip -4 route add default via "$r" dev "$interface"; break; done
    : >/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    ;;
esac
exit 0
EOF
chmod 0755 "$R/etc/udhcpc.script"

# --- pack ------------------------------------------------------------------------------------------
# Reproducible: fixed mtimes, sorted names, no inode/device numbers, no gzip timestamp.
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) |
    gzip -9n >"$WORK/initrd.img"
cp "$VMLINUZ" "$WORK/vmlinuz"
{
    echo "hydra test guest, built by tests/guest/build-guest.sh"
    echo "$CONFIG_LINE"
    echo "kernel_package=$KPKG $KVER_PKG"
    echo "kernel_release=$KVER"
    echo "busybox_package=busybox-static $BVER_PKG"
    echo "modules=$(tr '\n' ' ' <"$R/etc/modules.order")"
    echo "builtin=${BUILTIN# }"
    echo "skipped=${SKIPPED# }"
} >"$WORK/stamp"

mv -f "$WORK/vmlinuz" "$OUT/vmlinuz"
mv -f "$WORK/initrd.img" "$OUT/initrd.img"
touch "$OUT/vmlinuz" "$OUT/initrd.img"
mv -f "$WORK/stamp" "$OUT/stamp"   # last: its presence (and mtime) marks a complete build
touch "$OUT/stamp"
log "built $OUT/vmlinuz ($KVER) and $OUT/initrd.img ($(du -k "$OUT/initrd.img" | cut -f1) KiB)"
