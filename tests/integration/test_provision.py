#!/usr/bin/python3
"""Provisioning end to end, against a local HTTP server (tests/httpd.py) and real QEMU under TCG.

Cloud-image path: a qcow2 image served xz-compressed with a SHA256SUMS file; hydrad downloads, verifies,
unpacks, makes the VM's disk (an overlay on the cached base), grows it, renders the cloud-init seed and builds
its ISO, then boots the tiny test guest (direct kernel boot) with disk and seed attached: GetVm's drives come
from QMP query-block. Then: cache hit (no second download of the image), disk grown but never shrunk, a guest
configuration change resets the disk (or keeps it with reuse_disk_on_change), a wrong checksum and a missing
file fail cleanly, another image URL removes the old URL's download. Bare-kernel path: an artifact tarball (the
tiny guest's kernel + initrd + a rootfs), behind a token, boots; the token is sent and never appears in hydrad's
log or replies. A destroy during a slow download cancels it and leaves nothing of it in the cache. Prints
"N passed, N failed"."""
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Daemon, EventCollector, HttpServer, rpc_error, wait_booted  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
TOKEN = "tok-3c1f-secret-9a7e"

check = Checks()


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def qemu_img_info(path):
    return json.loads(run("qemu-img", "info", "-U", "--output=json", path).stdout)


def mark_disk(path):
    """Writes a pattern into the disk (qemu-io), so that a reset disk can be told from a kept one."""
    run("qemu-io", "-f", "qcow2", "-c", "write -q -P 0x5a 0 4k", path)


def disk_marked(path):
    r = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -q -P 0x5a 0 4k", path], capture_output=True,
                       text=True)
    return r.returncode == 0 and "Pattern verification failed" not in r.stdout + r.stderr


def main():
    d = Daemon(HYDRAD, prefix="hydra-prov.")
    tmp, state = d.tmp, d.state
    www, private = f"{tmp}/www", f"{tmp}/private"
    os.makedirs(www)
    os.makedirs(private)

    # The "cloud image": a small qcow2 (64 MiB virtual), served xz-compressed, with a SHA256SUMS file.
    run("qemu-img", "create", "-q", "-f", "qcow2", f"{tmp}/cloud.qcow2", "64M")
    run("xz", "-k", "-T1", "-0", f"{tmp}/cloud.qcow2")
    shutil.move(f"{tmp}/cloud.qcow2.xz", f"{www}/cloud.qcow2.xz")
    shutil.copy(f"{www}/cloud.qcow2.xz", f"{www}/cloud-next.qcow2.xz")  # the same image under another URL
    digest = hashlib.sha256(open(f"{www}/cloud.qcow2.xz", "rb").read()).hexdigest()
    with open(f"{www}/SHA256SUMS", "w") as f:
        f.write(f"{'0' * 64}  other.qcow2\n{digest}  cloud.qcow2.xz\n{digest}  cloud-next.qcow2.xz\n")

    # The bare-kernel artifact: tiny/{vmlinuz, initrd.img, rootfs.qcow2}; the spec asks for vmlinuz-6.16 first
    # (start-vm.sh's versioned name) and falls back to vmlinuz.
    run("qemu-img", "create", "-q", "-f", "qcow2", f"{tmp}/rootfs.qcow2", "32M")
    with tarfile.open(f"{private}/rimd.tar.gz", "w:gz") as t:
        t.add(f"{GUEST}/vmlinuz", "tiny/vmlinuz")
        t.add(f"{GUEST}/initrd.img", "tiny/initrd.img")
        t.add(f"{tmp}/rootfs.qcow2", "tiny/rootfs.qcow2")

    public = HttpServer(tmp, "public", www)
    secret = HttpServer(tmp, "private", private, "--require-token", TOKEN)
    slow_www = f"{tmp}/slow"
    os.makedirs(slow_www)
    blob = os.urandom(3 << 20)
    with open(f"{slow_www}/slow.raw", "wb") as f:
        f.write(blob)
    slow = HttpServer(tmp, "slow", slow_www, "--slow", "300000")

    try:
        h = d.start(timeout=60)
        iso = pb.ROLE_ISOLATED

        def cloud_spec(**over):
            spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, disk_size_gib=1, keep_pristine=True,
                             kernel=pb.KernelBoot(kernel=f"{GUEST}/vmlinuz", initrd=f"{GUEST}/initrd.img",
                                                  cmdline="console=ttyS0 panic=-1"),
                             image=pb.Source(url=f"{public.url}/cloud.qcow2.xz", sums_url=f"{public.url}/SHA256SUMS"),
                             guest=pb.Guest(hostname="edge-1", password="correct horse",
                                            ssh_authorized_keys=["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHydra test"]),
                             shares=pb.Shares(kubelet_host_dir=f"{tmp}/k3s-var"))
            for k, v in over.items():
                if isinstance(v, dict):
                    for kk, vv in v.items():
                        setattr(getattr(spec, k), kk, vv)
                elif hasattr(v, "CopyFrom"):
                    getattr(spec, k).CopyFrom(v)
                else:
                    setattr(spec, k, v)
            return spec

        # --- the cloud-image path ---
        r = h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec()), timeout=10)
        check("register a cloud-image spec", r.changed)
        r2 = h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec()), timeout=10)
        check("register the same spec again (same cleartext password): unchanged, same hash",
              not r2.changed and r2.vm.spec.guest.password_hash == r.vm.spec.guest.password_hash)
        check("the cleartext password is hashed before it is stored (yescrypt)",
              r.vm.spec.guest.password == "" and r.vm.spec.guest.password_hash.startswith("$y$"))
        stored = open(f"{state}/isolated/spec.pb", "rb").read()
        check("the cleartext password is not in the stored spec", b"correct horse" not in stored)

        plan = h.PlanVm(pb.PlanVmRequest(role=iso), timeout=10)
        names = {os.path.basename(f.path): f.content.decode() for f in plan.files}
        check("plan: the four cloud-init files", sorted(names) == ["meta-data", "network-config", "user-data",
                                                                   "vendor-data"])
        check("plan: user-data has the hostname and the hash", '"edge-1"' in names.get("user-data", "")
              and r.vm.spec.guest.password_hash in names.get("user-data", ""))
        check("plan: no software section: no apt-get update or upgrade",
              "\npackage_update: false\npackage_upgrade: false\n" in names.get("user-data", ""))
        check("plan: the disk and the seed on the command line",
              any(f"{state}/isolated/disk.qcow2" in a for a in plan.argv)
              and any(f"{state}/isolated/seed.iso" in a for a in plan.argv))
        check("plan: nothing downloaded", public.requests("/cloud.qcow2.xz") == [])

        events = EventCollector(h, role=iso).events

        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        check("StartVm: running", vm.state == pb.VM_STATE_RUNNING, vm.last_error)
        check("GetVm: disk and seed paths", vm.disk_path == f"{state}/isolated/disk.qcow2"
              and vm.seed_path == f"{state}/isolated/seed.iso")
        drives = {d.id: d for d in vm.drives}
        check("QEMU has the disk attached (query-block)", "disk0" in drives and drives["disk0"].file == vm.disk_path
              and drives["disk0"].format == "qcow2", str(list(vm.drives)))
        check("QEMU has the seed attached read-only (query-block)", "seed0" in drives
              and drives["seed0"].file == vm.seed_path and drives["seed0"].read_only, str(list(vm.drives)))
        progress = [ev.progress for ev in events if ev.WhichOneof("kind") == "progress"]
        check("WatchEvents: download progress with the total", any(p.step == "download" and p.total > 0
                                                                  for p in progress), str(progress[:3]))
        check("WatchEvents: progress for unpack, seed and disk",
              {"unpack", "seed", "disk"} <= {p.step for p in progress}, str({p.step for p in progress}))
        check("the image was downloaded once, the SUMS file checked",
              len(public.requests("/cloud.qcow2.xz")) == 1 and len(public.requests("/SHA256SUMS")) >= 1)

        info = qemu_img_info(vm.disk_path)
        check("the disk is a qcow2 overlay on the cached, unpacked base",
              info.get("backing-filename", "").startswith(f"{state}/cache/")
              and info.get("backing-filename", "").endswith("/image"), str(info.get("backing-filename")))
        check("the disk was grown to disk_size_gib (1 GiB)", info["virtual-size"] == 1 << 30)

        iso_info = run("isoinfo", "-d", "-i", vm.seed_path).stdout
        check("seed ISO: volume id cidata, Joliet and Rock Ridge", "Volume id: cidata" in iso_info
              and "Joliet" in iso_info and "Rock Ridge" in iso_info, iso_info)
        for name in ["user-data", "meta-data", "network-config", "vendor-data"]:
            content = run("isoinfo", "-R", "-i", vm.seed_path, "-x", f"/{name}").stdout
            check(f"seed ISO: {name} reads back as generated", content == names.get(name), content[:200])
        with open(f"{tmp}/user-data", "w") as f:
            f.write(run("isoinfo", "-R", "-i", vm.seed_path, "-x", "/user-data").stdout)
        schema = subprocess.run(["cloud-init", "schema", "--config-file", f"{tmp}/user-data"], capture_output=True,
                                text=True)
        check("seed ISO: user-data passes cloud-init's schema", schema.returncode == 0, schema.stdout + schema.stderr)
        mode = os.stat(f"{state}/isolated/cloud-init/user-data").st_mode & 0o777
        check("cloud-init files are private (0600)", mode == 0o600, oct(mode))
        console = f"{state}/isolated/console.log"
        check("the kubelet share directories were made", os.path.isdir(f"{tmp}/k3s-var/var/lib/kubelet")
              and os.path.isdir(f"{tmp}/k3s-var/var/log/pods"))
        check("the guest boots with disk and seed attached",
              wait_booted(console, timeout=120))

        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        mark_disk(vm.disk_path)
        check("the marker reads back", disk_marked(vm.disk_path))

        # Cache hit: a second start downloads nothing but the small SUMS file.
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        check("second start: running", vm.state == pb.VM_STATE_RUNNING, vm.last_error)
        check("second start: the image came from the cache", len(public.requests("/cloud.qcow2.xz")) == 1,
              str(public.requests("/cloud.qcow2.xz")))
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        check("second start: the same disk (nothing changed)", disk_marked(vm.disk_path))

        # Grown, never shrunk: 2 GiB, then back to 1 GiB leaves it at 2.
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec(disk_size_gib=2)), timeout=10)
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        check("disk_size_gib 2: grown to 2 GiB", qemu_img_info(vm.disk_path)["virtual-size"] == 2 << 30)
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec(disk_size_gib=1)), timeout=10)
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        check("disk_size_gib 1 again: still 2 GiB (never shrunk)", vm.state == pb.VM_STATE_RUNNING
              and qemu_img_info(vm.disk_path)["virtual-size"] == 2 << 30,
              f"{vm.state} {vm.last_error} {qemu_img_info(vm.disk_path)['virtual-size']}")
        check("resizing kept the disk (the marker is still there)", disk_marked(vm.disk_path))

        # A guest configuration change resets the disk to pristine, and says so.
        n_events = len(events)
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec(guest={"hostname": "edge-2"})), timeout=10)
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        notices = [ev.notice.message for ev in events[n_events:] if ev.WhichOneof("kind") == "notice"]
        check("config change: the disk was reset (the marker is gone)", not disk_marked(vm.disk_path))
        check("config change: a notice says the disk was reset", any("disk reset" in n for n in notices),
              str(notices))
        mark_disk(vm.disk_path)

        # software.package_update/upgrade: through the API both ways, into the seed, and (guest configuration)
        # a change resets the disk too.
        n_events = len(events)
        r = h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec(guest={"hostname": "edge-2"},
                                                                        software=pb.Software(package_update=True))),
                         timeout=10)
        check("package_update: registered and returned as sent", r.changed and r.vm.spec.software.package_update
              and not r.vm.spec.software.package_upgrade, str(r.vm.spec.software))
        plan = h.PlanVm(pb.PlanVmRequest(role=iso), timeout=10)
        user_data = next((f.content.decode() for f in plan.files if f.path.endswith("/user-data")), "")
        check("package_update: the seed updates and does not upgrade",
              "\npackage_update: true\n" in user_data and "\npackage_upgrade: false\n" in user_data, user_data[:600])
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        notices = [ev.notice.message for ev in events[n_events:] if ev.WhichOneof("kind") == "notice"]
        check("package_update change: the disk was reset", not disk_marked(vm.disk_path)
              and any("disk reset" in n for n in notices), str(notices))
        mark_disk(vm.disk_path)

        n_events = len(events)
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=cloud_spec(guest={"hostname": "edge-3"},
                                                                    reuse_disk_on_change=True)), timeout=10)
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)
        notices = [ev.notice.message for ev in events[n_events:] if ev.WhichOneof("kind") == "notice"]
        check("reuse_disk_on_change: the disk was kept (the marker is there)", disk_marked(vm.disk_path))
        check("reuse_disk_on_change: a notice says so", any("disk kept" in n for n in notices), str(notices))

        # A wrong checksum: the start fails, says why, and leaves nothing in the cache.
        bad = cloud_spec(image=pb.Source(url=f"{public.url}/cloud.qcow2.xz", checksum="sha256:" + "ab" * 32))
        h.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=bad), timeout=10)
        e = rpc_error(h.StartVm, pb.StartVmRequest(role=pb.ROLE_HOST, timeout_seconds=120), timeout=150)
        vm = h.GetVm(pb.GetVmRequest(role=pb.ROLE_HOST), timeout=10)
        check("wrong checksum: the start fails", e is not None and vm.state == pb.VM_STATE_FAILED,
              e and e.details())
        check("wrong checksum: the error names both digests", e is not None and "ab" * 32 in e.details()
              and digest in e.details(), e and e.details())
        # The image's entry is shared with the isolated VM's (same URL): it holds the good copy only.
        partials = glob.glob(f"{state}/cache/*/*.part")
        check("wrong checksum: no partial file left in the cache", partials == [], str(partials))

        missing = cloud_spec(image=pb.Source(url=f"{public.url}/nope.qcow2"))
        h.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=missing), timeout=10)
        e = rpc_error(h.StartVm, pb.StartVmRequest(role=pb.ROLE_HOST, timeout_seconds=60), timeout=90)
        check("missing file: the start fails with the HTTP status and the URL", e is not None
              and "404" in e.details() and "/nope.qcow2" in e.details(), e and e.details())
        h.DestroyVm(pb.DestroyVmRequest(role=pb.ROLE_HOST), timeout=30)

        # The spec moves to another image URL: the old URL's download goes (it stays while the old disk is an
        # overlay on it, until the start makes the new disk), the new one is what the disk leans on.
        old_entry = os.path.dirname(qemu_img_info(f"{state}/isolated/disk.qcow2").get("backing-filename", "/x/y"))
        check("the disk is an overlay on the first URL's download", os.path.isdir(old_entry), old_entry)
        nxt = cloud_spec(image=pb.Source(url=f"{public.url}/cloud-next.qcow2.xz", sums_url=f"{public.url}/SHA256SUMS"))
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=nxt), timeout=10)
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        check("another image URL: running", vm.state == pb.VM_STATE_RUNNING, vm.last_error)
        for _ in range(100):
            if not os.path.exists(old_entry):
                break
            time.sleep(0.1)
        new_base = qemu_img_info(vm.disk_path).get("backing-filename", "")
        check("another image URL: the old URL's cached download is gone",
              not os.path.exists(old_entry) and os.path.dirname(new_base) != old_entry,
              str(glob.glob(f"{state}/cache/*")))
        check("another image URL: the disk leans on the new one", os.path.exists(new_base), new_base)
        check("the removal is logged with its size", f"removed cached download {os.path.basename(old_entry)} ("
              in d.log(), d.log()[-2000:])
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)

        h.DestroyVm(pb.DestroyVmRequest(role=iso, keep_cache=True), timeout=60)
        check("destroy with keep_cache: the VM's files are gone, the cache stays",
              not os.path.exists(f"{state}/isolated") and glob.glob(f"{state}/cache/*/image") != [],
              str(glob.glob(f"{state}/*") + glob.glob(f"{state}/cache/*/*")))

        # --- the bare-kernel path, behind a token ---
        bare = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG,
                         bare=pb.BareKernel(artifact=pb.Source(url=f"{secret.url}/rimd.tar.gz", token=TOKEN),
                                            dir="tiny", kernel="vmlinuz", kernel_version="-6.16",
                                            initrd="initrd.img", rootfs="rootfs.qcow2"),
                         kernel=pb.KernelBoot(cmdline="panic=-1 hydra.test=1"))
        r = h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=bare), timeout=10)
        check("bare kernel: registered; the token is shown as (set)",
              r.vm.spec.bare.artifact.token == "(set)", r.vm.spec.bare.artifact.token)
        mode = os.stat(f"{state}/isolated/spec.pb").st_mode & 0o777
        check("the stored spec (it holds the token) is private (0600)", mode == 0o600, oct(mode))
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        check("bare kernel: running", vm.state == pb.VM_STATE_RUNNING, vm.last_error)
        argv = open(f"/proc/{vm.pid}/cmdline").read().split("\0") if vm.pid else []
        check("bare kernel: the kernel fell back from vmlinuz-6.16 to tiny/vmlinuz",
              f"{state}/isolated/artifact/tiny/vmlinuz" in argv, str(argv))
        append = argv[argv.index("-append") + 1] if "-append" in argv else ""
        check("bare kernel: start-vm.sh's command line plus the extra",
              append.startswith("ip=10.0.2.15::10.0.2.2:255.255.255.0:rimd:eth0:off") and "ENABLE_SSH=true" in append
              and "9P_TRANSPORT=virtio" in append and append.endswith("panic=-1 hydra.test=1"), append)
        drives = {d.id: d for d in vm.drives}
        check("bare kernel: the rootfs is the VM's disk (an independent copy)", "disk0" in drives
              and "backing-filename" not in qemu_img_info(vm.disk_path))
        check("bare kernel: the guest boots", wait_booted(f"{state}/isolated/console.log", timeout=120))
        reqs = secret.requests("/rimd.tar.gz")
        check("the token header was sent", reqs and reqs[0]["headers"].get("PRIVATE-TOKEN") == TOKEN, str(reqs[:1]))
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)

        no_token = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG,
                             bare=pb.BareKernel(artifact=pb.Source(url=f"{secret.url}/rimd.tar.gz"), dir="tiny",
                                                kernel="vmlinuz", initrd="initrd.img", rootfs="rootfs.qcow2"))
        h.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=no_token), timeout=10)
        e = rpc_error(h.StartVm, pb.StartVmRequest(role=pb.ROLE_HOST, timeout_seconds=60), timeout=90)
        check("no token: the start fails with 401", e is not None and "401" in e.details(), e and e.details())

        missing_file = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG,
                                 bare=pb.BareKernel(artifact=pb.Source(url=f"{secret.url}/rimd.tar.gz", token=TOKEN),
                                                    dir="tiny", kernel="vmlinuz", initrd="initramfs.cpio",
                                                    rootfs="rootfs.qcow2"))
        h.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=missing_file), timeout=10)
        e = rpc_error(h.StartVm, pb.StartVmRequest(role=pb.ROLE_HOST, timeout_seconds=60), timeout=90)
        check("a file missing from the artifact: an error that names it", e is not None
              and "initramfs.cpio" in e.details(), e and e.details())
        vm = h.GetVm(pb.GetVmRequest(role=pb.ROLE_HOST), timeout=10)
        check("GetVm never shows the token", TOKEN not in str(vm))

        h.DestroyVm(pb.DestroyVmRequest(role=iso), timeout=60)
        h.DestroyVm(pb.DestroyVmRequest(role=pb.ROLE_HOST), timeout=60)
        check("destroy without keep_cache: the artifact's cache entry is gone",
              not any(os.path.exists(f"{d}/data") and "rimd" in open(f"{d}/meta.json").read()
                      for d in glob.glob(f"{state}/cache/*")))

        # A destroy while the image is downloading: the download stops, then its entry goes, nothing of it left.
        slow_spec = cloud_spec(image=pb.Source(url=f"{slow.url}/slow.raw",
                                               checksum="sha256:" + hashlib.sha256(blob).hexdigest()))
        h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=slow_spec), timeout=10)
        fut = h.StartVm.future(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        for _ in range(300):
            parts = glob.glob(f"{state}/cache/*/data.part")
            if parts and os.path.getsize(parts[0]) >= 300000:
                break
            time.sleep(0.05)
        vm = h.GetVm(pb.GetVmRequest(role=iso), timeout=10)
        check("slow download: preparing, a .part growing", parts and vm.state == pb.VM_STATE_PREPARING,
              f"{vm.state} {parts}")
        h.DestroyVm(pb.DestroyVmRequest(role=iso), timeout=60)
        check("destroy during the download: the start is cancelled", rpc_error(fut.result) is not None)
        check("destroy during the download: its cache entry is gone when DestroyVm answers",
              parts and not os.path.exists(os.path.dirname(parts[0])), str(glob.glob(f"{state}/cache/*/*")))
        check("destroy during the download: no removal failed", "cannot remove" not in d.log().lower(),
              d.log()[-2000:])
    finally:
        rc = d.stop()
        public.stop()
        secret.stop()
        slow.stop()
        check("hydrad exits 0 (no leak under ASan)", rc == 0, f"exit status {rc}")
        text = d.log()
        check("the token never appears in hydrad's log", TOKEN not in text)
        check("the guest password never appears in hydrad's log", "correct horse" not in text)
        if check.failed:
            print(text[-6000:])
        d.cleanup(keep=bool(os.environ.get("HYDRA_KEEP_TMP")))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
