#!/usr/bin/python3
"""QEMU as an unprivileged user (issue 13, item 4): hydrad.conf `qemu_user = nobody`, real QEMU under TCG.

 1. A cloud-image VM (a qcow2 overlay on the cached download, a cloud-init seed) whose spec needs nothing of root's:
    PlanVm says QEMU runs as nobody, with no reason to stay root; QEMU runs with uid, gid and groups nobody's only;
    the guest boots and its console works (hydrad binds the console socket and passes it, QEMU writes nothing in
    the run directory); the overlay QEMU writes became nobody's, the seed and the cached base it only reads are
    readable by nobody's group (still root's), the VM's directory lets that group through (0710) and spec.pb / state.json stay
    root's 0600. hydrad killed -9 and its runtime record lost: the next hydrad finds the QEMU by the QMP socket it
    holds (not by its uid or arguments) and takes it back; it stops. The overlay's header rewritten to name
    /etc/shadow as its backing file (what a QEMU taken over by its guest could do): the next start is refused.
    A bare-kernel VM (its artifact unpacked in the VM's directory) runs as nobody too.
 2. A spec that keeps QEMU root (a host directory shared over 9p, a disk in a directory nobody cannot enter):
    PlanVm and `hydractl plan` say root and why, each reason naming the feature or the file; QEMU runs as root;
    hydrad's log says why.
 3. An unknown qemu_user: hydrad refuses to start (exit 2, as for any configuration error), naming it.

Prints "N passed, N failed"."""
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Daemon, HttpServer, note, wait_booted, wait_for  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
HYDRACTL = os.environ["HYDRACTL"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
ISO = pb.ROLE_ISOLATED
NOBODY = 65534

check = Checks()


def status_ids(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1:]
    return None


def owner(path):
    st = os.stat(path)
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True)


def main():
    if os.geteuid() != 0:
        print("1..0 # SKIP needs root (QEMU is run as nobody)")
        return 77
    d = Daemon(HYDRAD, prefix="hydra-qemu-user.")
    tmp, state, runs = d.tmp, d.state, d.run
    os.chmod(tmp, 0o755)  # nobody passes through to the state directory, and to the guest's kernel copy
    conf = f"{tmp}/hydrad.conf"
    with open(conf, "w") as f:
        f.write("[hydrad]\nqemu_user = nobody\n")
    d.extra_args = ["-c", conf]

    # The guest's kernel and initrd where nobody can read them (HYDRA_GUEST_DIR may be in a 0700 checkout).
    guest = f"{tmp}/guest"
    os.makedirs(guest, mode=0o755)
    for name in ("vmlinuz", "initrd.img"):
        shutil.copy(f"{GUEST}/{name}", f"{guest}/{name}")
        os.chmod(f"{guest}/{name}", 0o644)
    # The cloud image, served over HTTP with its SHA256SUMS.
    www = f"{tmp}/www"
    os.makedirs(www)
    run("qemu-img", "create", "-q", "-f", "qcow2", f"{www}/cloud.qcow2", "64M")
    digest = hashlib.sha256(open(f"{www}/cloud.qcow2", "rb").read()).hexdigest()
    with open(f"{www}/SHA256SUMS", "w") as f:
        f.write(f"{digest}  cloud.qcow2\n")
    # A disk nobody cannot reach: a file in a 0700 directory of root's.
    private = f"{tmp}/private"
    os.makedirs(private, mode=0o700)
    run("qemu-img", "create", "-q", "-f", "raw", f"{private}/disk.raw", "16M")

    # A bare-kernel artifact: tiny/{vmlinuz, initrd.img, rootfs.qcow2}, unpacked into the VM's directory.
    run("qemu-img", "create", "-q", "-f", "qcow2", f"{tmp}/rootfs.qcow2", "32M")
    with tarfile.open(f"{www}/rimd.tar.gz", "w:gz") as t:
        t.add(f"{guest}/vmlinuz", "tiny/vmlinuz")
        t.add(f"{guest}/initrd.img", "tiny/initrd.img")
        t.add(f"{tmp}/rootfs.qcow2", "tiny/rootfs.qcow2")

    http = HttpServer(tmp, "www", www)
    try:
        api = d.start(timeout=60)
        kernel = pb.KernelBoot(kernel=f"{guest}/vmlinuz", initrd=f"{guest}/initrd.img", cmdline="console=ttyS0 panic=-1")
        spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, keep_pristine=True, kernel=kernel,
                         image=pb.Source(url=f"{http.url}/cloud.qcow2", sums_url=f"{http.url}/SHA256SUMS"),
                         shares=pb.Shares(kubelet=pb.KUBELET_SHARES_NONE))
        api.RegisterVm(pb.RegisterVmRequest(role=ISO, spec=spec), timeout=30)

        # --- 1. nothing keeps QEMU root ---
        plan = api.PlanVm(pb.PlanVmRequest(role=ISO), timeout=10)
        check("plan: QEMU runs as nobody, nothing keeps it root",
              plan.qemu_user == "nobody" and list(plan.qemu_root_reasons) == [], (plan.qemu_user, plan.qemu_root_reasons))
        text = subprocess.run([HYDRACTL, "--socket", d.sock, "plan", "isolated"], capture_output=True, text=True)
        check("hydractl plan: '# QEMU runs as nobody' first", text.stdout.splitlines()[:1] == ["# QEMU runs as nobody"],
              text.stdout[:300] + text.stderr)
        check("the QEMU command line says console fd=4 (hydrad binds the socket)",
              "socket,id=console,fd=4,server=on,wait=off" in plan.argv, plan.argv)

        api.StartVm(pb.StartVmRequest(role=ISO), timeout=180)
        vm = api.GetVm(pb.GetVmRequest(role=ISO), timeout=10)
        pid = vm.pid
        check("QEMU runs as nobody: uid, gid", status_ids(pid, "Uid") == [str(NOBODY)] * 4
              and status_ids(pid, "Gid") == [str(NOBODY)] * 4, (status_ids(pid, "Uid"), status_ids(pid, "Gid")))
        check("QEMU has nobody's groups only (none of root's)", status_ids(pid, "Groups") == [str(NOBODY)],
              status_ids(pid, "Groups"))
        check("the guest boots and its console reaches console.log", wait_booted(f"{state}/isolated/console.log"))
        check("hydrad's log names the user", f"QEMU started (pid {pid}, user nobody)" in d.log(), d.log()[-1500:])
        check("QEMU runs in its VM's state directory (ls -l /proc/PID/cwd says whose it is)",
              os.readlink(f"/proc/{pid}/cwd") == f"{state}/isolated", os.readlink(f"/proc/{pid}/cwd"))
        check("QEMU's fd 4 is the console socket hydrad passed",
              os.readlink(f"/proc/{pid}/fd/4").startswith("socket:"), os.readlink(f"/proc/{pid}/fd/4"))

        vmdir = f"{state}/isolated"
        check("the overlay (QEMU writes it) is nobody's", owner(f"{vmdir}/disk.qcow2")[:2] == (NOBODY, NOBODY),
              owner(f"{vmdir}/disk.qcow2"))
        check("the seed (QEMU only reads it) stays root's, readable by nobody's group",
              owner(f"{vmdir}/seed.iso")[:2] == (0, NOBODY) and owner(f"{vmdir}/seed.iso")[2] & 0o040,
              owner(f"{vmdir}/seed.iso"))
        check("spec.pb and state.json stay root's, 0600",
              owner(f"{vmdir}/spec.pb") == (0, 0, 0o600) and owner(f"{vmdir}/state.json")[:2] == (0, 0)
              and owner(f"{vmdir}/state.json")[2] & 0o077 == 0, (owner(f"{vmdir}/spec.pb"), owner(f"{vmdir}/state.json")))
        check("the VM's directory: 0710 root:nogroup", owner(vmdir) == (0, NOBODY, 0o710), oct(owner(vmdir)[2]))
        check("the state directory lets others through, not list (o+x, no o+r)",
              owner(state)[2] & 0o005 == 0o001, oct(owner(state)[2]))
        check("the cache: 0710 root:nogroup", owner(f"{state}/cache") == (0, NOBODY, 0o710), owner(f"{state}/cache"))
        bases = [os.path.join(r, "data") for r, _, fs in os.walk(f"{state}/cache") if "data" in fs]
        check("the cached base: in nobody's group and readable by it, still root's",
              len(bases) == 1 and owner(bases[0])[:2] == (0, NOBODY) and owner(bases[0])[2] & 0o040,
              [(b, owner(b)) for b in bases])
        metas = [os.path.join(r, "meta.json") for r, _, fs in os.walk(f"{state}/cache") if "meta.json" in fs]
        check("the cache's meta.json stays root's 0600", metas and all(owner(m) == (0, 0, 0o600) for m in metas),
              [(m, owner(m)) for m in metas])
        theirs = [n for n in os.listdir(f"{runs}/isolated") if os.lstat(f"{runs}/isolated/{n}").st_uid != 0]
        check("nothing in the run directory is nobody's (QEMU writes nothing there)", theirs == [], theirs)
        check("qemu-console.sock: root's, 0600", owner(f"{runs}/isolated/qemu-console.sock") == (0, 0, 0o600),
              owner(f"{runs}/isolated/qemu-console.sock"))

        # hydrad dies before its record of QEMU is durable (simulated: killed, the record removed).
        d.kill9()
        os.unlink(f"{runs}/isolated/runtime.json")
        api = d.start(timeout=60)
        adopted = wait_for(lambda: f"QEMU (pid {pid}) was started by the previous hydrad but not recorded" in d.log(), 20)
        check("an unrecorded QEMU of nobody's is found by the QMP socket it holds, and taken back", adopted,
              d.log()[-1500:])
        vm = api.GetVm(pb.GetVmRequest(role=ISO), timeout=10)
        check("adopted: running, the same pid", vm.state == pb.VM_STATE_RUNNING and vm.pid == pid, (vm.state, vm.pid))
        api.StopVm(pb.StopVmRequest(role=ISO, force=True), timeout=60)
        check("stopped (QMP and signals reach nobody's QEMU)", wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 20))

        # The overlay is nobody's: a QEMU taken over by its guest could rewrite its header to name any file as its
        # backing, for a later QEMU run as root to read. hydrad refuses a disk whose backing left the cache.
        run("qemu-img", "rebase", "-u", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", f"{vmdir}/disk.qcow2")
        try:
            api.StartVm(pb.StartVmRequest(role=ISO), timeout=60)
            refused = None
        except grpc.RpcError as e:
            refused = e.details()
        check("a disk whose header names a backing file outside the cache is not started",
              refused and "names a backing file outside hydrad's download cache" in refused
              and "'/etc/shadow'" in refused, refused)
        os.unlink(f"{vmdir}/disk.qcow2")

        # A bare-kernel VM: QEMU as nobody reads the kernel and initrd unpacked in the VM's directory (still root's)
        # and writes its disk (an overlay on the artifact's rootfs: nobody's).
        bare = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, keep_pristine=True,
                         bare=pb.BareKernel(artifact=pb.Source(url=f"{http.url}/rimd.tar.gz"), dir="tiny",
                                            kernel="vmlinuz", initrd="initrd.img", rootfs="rootfs.qcow2"),
                         kernel=pb.KernelBoot(cmdline="panic=-1"), shares=pb.Shares(kubelet=pb.KUBELET_SHARES_NONE))
        api.RegisterVm(pb.RegisterVmRequest(role=ISO, spec=bare), timeout=30)
        vm = api.StartVm(pb.StartVmRequest(role=ISO, timeout_seconds=120), timeout=150)
        unpacked = [os.path.join(r, f) for r, _, fs in os.walk(f"{vmdir}/artifact") for f in fs
                    if f in ("vmlinuz", "initrd.img")]
        check("bare kernel: QEMU runs as nobody, the guest boots",
              vm.state == pb.VM_STATE_RUNNING and status_ids(vm.pid, "Uid") == [str(NOBODY)] * 4
              and wait_booted(f"{vmdir}/console.log"), (vm.state, vm.last_error, status_ids(vm.pid, "Uid")))
        check("bare kernel: the unpacked kernel and initrd stay root's, readable by nobody's group; the disk is "
              "nobody's", len(unpacked) == 2 and all(owner(u)[:2] == (0, NOBODY) and owner(u)[2] & 0o040
                                                     for u in unpacked)
              and owner(vm.disk_path)[:2] == (NOBODY, NOBODY), [(u, owner(u)) for u in unpacked])
        api.StopVm(pb.StopVmRequest(role=ISO, force=True), timeout=60)

        # --- 2. a spec that keeps QEMU root ---
        os.makedirs(f"{tmp}/share")
        root_spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=kernel, disk=f"{private}/disk.raw",
                              shares=pb.Shares(extra=[pb.Share(host_path=f"{tmp}/share", guest_path="/mnt/share")]))
        api.RegisterVm(pb.RegisterVmRequest(role=ISO, spec=root_spec), timeout=30)
        plan = api.PlanVm(pb.PlanVmRequest(role=ISO), timeout=10)
        reasons = list(plan.qemu_root_reasons)
        check("plan: root, because of a share over 9p and the disk nobody cannot reach",
              plan.qemu_user == "root" and len(reasons) == 2 and reasons[0].startswith("shares.extra: QEMU's 9p")
              and reasons[1] == f"disk: {private}/disk.raw is not readable and writable by nobody",
              (plan.qemu_user, reasons))
        text = subprocess.run([HYDRACTL, "--socket", d.sock, "plan", "isolated"], capture_output=True, text=True)
        lines = text.stdout.splitlines()
        check("hydractl plan says root and why", lines[:1] == ["# QEMU runs as root, not as hydrad.conf's qemu_user, "
                                                               "because:"] and lines[2:3] == [f"#   {reasons[1]}"],
              lines[:4])
        api.StartVm(pb.StartVmRequest(role=ISO), timeout=180)
        pid = api.GetVm(pb.GetVmRequest(role=ISO), timeout=10).pid
        check("QEMU runs as root", status_ids(pid, "Uid") == ["0"] * 4, status_ids(pid, "Uid"))
        check("hydrad's log says why", f"QEMU runs as root, not as nobody: disk: {private}/disk.raw" in d.log(),
              d.log()[-1500:])
        check("the VM's directory is 0700 again", owner(vmdir)[2] == 0o700, oct(owner(vmdir)[2]))
        api.StopVm(pb.StopVmRequest(role=ISO, force=True), timeout=60)
        rc = d.stop()
        check(f"hydrad exits 0 (got {rc})", rc == 0)

        # --- 3. an unknown user ---
        with open(f"{tmp}/bad.conf", "w") as f:
            f.write("[hydrad]\nqemu_user = hydra-no-such-user\n")
        r = subprocess.run([HYDRAD, "-c", f"{tmp}/bad.conf", "--state-dir", f"{tmp}/s2", "--run-dir", f"{tmp}/r2"],
                           capture_output=True, text=True, timeout=30)
        check("an unknown qemu_user: hydrad exits 2 (a configuration error) naming it, nothing made",
              r.returncode == 2 and "qemu_user: user 'hydra-no-such-user' does not exist" in r.stderr
              and not os.path.exists(f"{tmp}/s2"), (r.returncode, r.stderr[-500:]))
    finally:
        http.stop()
        note(f"hydrad log: {d.log_path}")
        d.cleanup(keep=check.failed > 0)
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
