#!/usr/bin/python3
"""Tokens in a URL's query (issue 9, item 5): a cloud image behind a signed URL
(?private_token=...&X-Amz-Signature=...), whose server redirects to another signed URL, with a SUMS url that carries
its own signature. The downloads must use the URLs whole (the server sees every secret), yet no secret value may
appear in hydrad's log, WatchEvents (progress, notices), GetVm / ListVms, hydractl status and list (text and
--json), or anywhere under the cache directory (file names, meta.json, which is private: 0600). The parameter names
do appear, so that a person can tell which URL it was. Also a 404 on such a URL: the error (RPC status, last_error)
shows the names only. The guest's password (hashed before it is stored) and the tokens are in neither QEMU's nor
hydrad's command line or environment (/proc/PID/cmdline, /proc/PID/environ; issue 13). The guest is started (QEMU running) but not waited for. Prints "N passed, N failed"."""
import hashlib
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Daemon, EventCollector, HttpServer, rpc_error  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
HYDRACTL = os.environ["HYDRACTL"]
GUEST = os.environ["HYDRA_GUEST_DIR"]

TOKEN = "s3cret-private-token-1f0a"
SIG = "s3cret-amz-signature-77b2"
REDIRECT_SIG = "s3cret-redirect-sig-c41d"
SUMS_SIG = "s3cret-sums-sig-9e3b"
CSI_SIG = "s3cret-csi-sig-52aa"
DEB_TOKEN = "s3cret-deb-token-0c6e"
PASSWORD = "s3cret-guest-password-a7d4"
SECRETS = [TOKEN, SIG, REDIRECT_SIG, SUMS_SIG, CSI_SIG, DEB_TOKEN, PASSWORD]

check = Checks()


def leaked(text):
    """The secrets found in text (str or bytes)."""
    if isinstance(text, bytes):
        return [s for s in SECRETS if s.encode() in text]
    return [s for s in SECRETS if s in text]


def hydractl(sock, *args):
    r = subprocess.run([HYDRACTL, "--socket", sock, *args], capture_output=True, text=True, timeout=60)
    return r.stdout + r.stderr


def main():
    d = Daemon(HYDRAD, prefix="hydra-redact.")
    www = f"{d.tmp}/www"
    os.makedirs(www)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{d.tmp}/cloud.qcow2", "64M"], check=True)
    subprocess.run(["xz", "-T1", "-0", f"{d.tmp}/cloud.qcow2"], check=True)
    shutil.move(f"{d.tmp}/cloud.qcow2.xz", f"{www}/cloud.qcow2.xz")
    digest = hashlib.sha256(open(f"{www}/cloud.qcow2.xz", "rb").read()).hexdigest()
    with open(f"{www}/SHA256SUMS", "w") as f:
        f.write(f"{digest}  cloud.qcow2.xz\n")
    srv = HttpServer(d.tmp, "httpd", www, "--redirect-query", f"X-Amz-Signature={REDIRECT_SIG}")

    image_url = f"{srv.url}/_redirect/query/cloud.qcow2.xz?private_token={TOKEN}&X-Amz-Signature={SIG}"
    missing_url = f"{srv.url}/nope.qcow2.xz?private_token={TOKEN}&X-Amz-Signature={SIG}"

    def spec(url, sums=None):
        return pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, disk_size_gib=1,
                         kernel=pb.KernelBoot(kernel=f"{GUEST}/vmlinuz", initrd=f"{GUEST}/initrd.img",
                                              cmdline="console=ttyS0 panic=-1"),
                         image=pb.Source(url=url, sums_url=sums or ""),
                         guest=pb.Guest(hostname="redact-1", password=PASSWORD),
                         software=pb.Software(csi_grpc_proxy_url=f"https://example.org/csi/?sig={CSI_SIG}&arch=",
                                              extra_debs=[f"https://example.org/x.deb?job_token={DEB_TOKEN}"]),
                         shares=pb.Shares(kubelet_host_dir=f"{d.tmp}/k3s-var"))

    rc = None
    try:
        h = d.start()
        iso, host = pb.ROLE_ISOLATED, pb.ROLE_HOST
        events = EventCollector(h).events

        r = h.RegisterVm(pb.RegisterVmRequest(role=iso, spec=spec(image_url, f"{srv.url}/SHA256SUMS?X-Amz-Signature="
                                                                              f"{SUMS_SIG}")), timeout=10)
        check("RegisterVm's reply shows no secret", leaked(str(r)) == [])
        vm = h.StartVm(pb.StartVmRequest(role=iso, timeout_seconds=120), timeout=150)
        check("StartVm from the signed URL: running", vm.state == pb.VM_STATE_RUNNING)
        paths = srv.paths()
        check("the server saw every secret: the URLs were used whole (SUMS, image, redirect)",
              sorted(leaked(" ".join(paths))) == sorted([TOKEN, SIG, REDIRECT_SIG, SUMS_SIG]))
        check("StartVm's reply shows no secret", leaked(str(vm)) == [])
        for who, pid in (("QEMU", vm.pid), ("hydrad", d.proc.pid)):
            proc = b"".join(open(f"/proc/{pid}/{f}", "rb").read() for f in ("cmdline", "environ"))
            check(f"{who}'s /proc/PID/cmdline and environ hold no password or token", proc and leaked(proc) == [],
                  leaked(proc))

        vm = h.GetVm(pb.GetVmRequest(role=iso), timeout=10)
        check("GetVm shows no secret", leaked(str(vm)) == [])
        check("GetVm: the image url keeps its parameter names",
              vm.spec.image.url.endswith("/_redirect/query/cloud.qcow2.xz?private_token=REDACTED&X-Amz-Signature="
                                         "REDACTED") and "X-Amz-Signature=REDACTED" in vm.spec.image.sums_url)
        check("GetVm: the software URLs keep their parameter names",
              "sig=REDACTED" in vm.spec.software.csi_grpc_proxy_url
              and "job_token=REDACTED" in vm.spec.software.extra_debs[0])
        check("ListVms shows no secret", leaked(str(h.ListVms(pb.ListVmsRequest(), timeout=10))) == [])
        out = "".join(hydractl(d.sock, *args) for args in (["status", "isolated"], ["--json", "status", "isolated"],
                                                            ["list"], ["--json", "list"]))
        check("hydractl status / list (text and --json) show no secret", leaked(out) == [])
        check("hydractl status --json shows the parameter names", "private_token=REDACTED" in out)

        progress = [ev.progress for ev in events if ev.WhichOneof("kind") == "progress"]
        downloads = [p.what for p in progress if p.step == "download"]
        check("WatchEvents: download progress names the URL with its parameter names",
              downloads and all("private_token=REDACTED&X-Amz-Signature=REDACTED" in w for w in downloads))
        check("WatchEvents (progress, notices, states) show no secret", leaked("".join(str(e) for e in events)) == [])
        h.StopVm(pb.StopVmRequest(role=iso, force=True), timeout=60)

        # A 404 on a signed URL: the error names the URL, not its secrets.
        h.RegisterVm(pb.RegisterVmRequest(role=host, spec=spec(missing_url)), timeout=10)
        e = rpc_error(h.StartVm, pb.StartVmRequest(role=host, timeout_seconds=60), timeout=90)
        details = e.details() if e else ""
        check("404: the start fails with the status and the URL's parameter names",
              "404" in details and "/nope.qcow2.xz?private_token=REDACTED&X-Amz-Signature=REDACTED" in details)
        check("404: the RPC status shows no secret", leaked(details) == [])
        vm = h.GetVm(pb.GetVmRequest(role=host), timeout=10)
        check("404: last_error shows the status, and no secret", "404" in vm.last_error and leaked(str(vm)) == [])
        check("404: the server saw the secrets", any(TOKEN in p for p in srv.paths() if "nope" in p))
        check("WatchEvents after the 404 show no secret", leaked("".join(str(e) for e in events)) == [])

        cache = f"{d.state}/cache"
        files = [os.path.join(top, n) for top, _, names in os.walk(cache) for n in names]
        bad = [f for f in files if leaked(f) or leaked(open(f, "rb").read())]
        check("nothing under the cache directory names or holds a secret", files and bad == [])
        metas = [f for f in files if os.path.basename(f) == "meta.json"]
        check("meta.json files are private (0600)", metas and all(os.stat(f).st_mode & 0o777 == 0o600 for f in metas))
        check("meta.json shows the URL's parameter names", any("private_token=REDACTED" in open(f).read()
                                                               for f in metas))
    finally:
        rc = d.stop()
        srv.stop()
        log = d.log()
        check("hydrad exits 0", rc == 0)
        check("hydrad's log shows no secret", leaked(log) == [])
        check("hydrad's log shows the parameter names", "private_token=REDACTED" in log)
        if check.failed:
            print(log[-4000:])
        d.cleanup()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
