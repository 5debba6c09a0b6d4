#!/usr/bin/python3
"""Where the loop stalls (issue 10, item 3): figures to report, never assertions.

  bench/bench_loop.py [--build build] [--guest build/guest] [--image-mib 512] [--disk-gib 8] [--json]

hydrad runs with HYDRA_LOOP_STATS=1 (daemon/loopstat.c: a 1 ms timer; how late it fires is how long something else
held the loop) while 32 clients call GetVm (of the other VM, registered and stopped) 100 times a second each
(bench_rpc). A cloud-image VM goes through register (the password hashed), start (download of an --image-mib image
from a local HTTP server, checksum, unpack, overlay disk grown to --disk-gib, cloud-init seed, QEMU), stop, start
again (everything cached), and destroy (the disk and the cache removed). For each phase: its wall time, GetVm latency
(worst batch p99, max) and the loop's lateness (p99, max) as hydrad itself measured it."""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import benchenv


class Load(threading.Thread):
    """32 GetVm clients at 100 calls/s each, in batches of a fifth of a second, until stopped."""

    def __init__(self, build, sock):
        super().__init__(daemon=True)
        self.cmd = [f"{build}/bench_rpc", sock, "32", "20", "100"]
        self.batches = []
        self.stopping = threading.Event()
        self.start()

    def run(self):
        while not self.stopping.is_set():
            out = subprocess.run(self.cmd, capture_output=True, text=True)
            if out.returncode == 0:
                self.batches.append(json.loads(out.stdout))

    def take(self):
        b, self.batches = self.batches, []
        return b

    def stop(self):
        self.stopping.set()
        self.join()


def loop_lag(daemon, label):
    """SIGUSR2, then hydrad's report line: ticks, p50, p99, max (us)."""
    size = os.path.getsize(daemon.log_path)
    daemon.proc.send_signal(signal.SIGUSR2)
    pat = re.compile(r"loop lag \[SIGUSR2\]: (\d+) ticks, p50 (\d+) us, p99 (\d+) us, max (\d+) us")
    deadline = time.time() + 10
    while time.time() < deadline:
        with open(daemon.log_path) as f:
            f.seek(size)
            m = pat.search(f.read())
        if m:
            return dict(zip(("ticks", "p50_us", "p99_us", "max_us"), map(int, m.groups())))
        time.sleep(0.05)
    raise RuntimeError(f"{label}: no loop report in hydrad's log")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-mib", type=int, default=512)
    ap.add_argument("--disk-gib", type=int, default=8)
    args = benchenv.parse_args(ap)
    build, guest = args.build, args.guest
    from hydra_client import Daemon, HttpServer, pb, wait_for  # noqa: E402

    tmp = tempfile.mkdtemp(prefix="hydra-bench-loop.")
    www = f"{tmp}/www"
    os.makedirs(www)
    h = hashlib.sha256()
    with open(f"{www}/image.raw", "wb") as f:  # incompressible: the cache and the disk are real bytes
        for _ in range(args.image_mib):
            block = os.urandom(1 << 20)
            h.update(block)
            f.write(block)
    httpd = HttpServer(tmp, "httpd", www, log=False)
    url = f"{httpd.url}/image.raw"

    os.environ["HYDRA_LOOP_STATS"] = "1"
    d = Daemon(f"{build}/hydrad", prefix="hydra-bench-loop-d.", extra_args=["--log-level", "info"])
    results = {}
    try:
        api = d.start()
        # bench_rpc asks for the isolated VM: a registered one, so that every GetVm succeeds; the VM under test is
        # the host.
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=pb.VmSpec(
            cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=pb.KernelBoot(kernel=f"{guest}/vmlinuz"))), timeout=30)
        load = Load(build, d.sock)
        time.sleep(1)
        kernel = pb.KernelBoot(kernel=f"{guest}/vmlinuz", initrd=f"{guest}/initrd.img", cmdline="console=ttyS0")
        spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=kernel, disk_size_gib=args.disk_gib,
                         keep_pristine=False, image=pb.Source(url=url, checksum=f"sha256:{h.hexdigest()}"),
                         guest=pb.Guest(hostname="bench", password="bench-password"))
        phases = [
            ("idle", lambda: time.sleep(2)),
            ("register", lambda: api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=spec), timeout=60)),
            ("start (download, disk, seed)", lambda: api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST),
                                                                 timeout=600)),
            ("stop", lambda: api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)),
            ("start (cached)", lambda: api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=600)),
            ("stop again", lambda: api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)),
            ("destroy (disk and cache removed)", lambda: api.DestroyVm(pb.DestroyVmRequest(role=pb.ROLE_HOST),
                                                                       timeout=120)),
        ]
        for name, op in phases:
            loop_lag(d, name)
            load.take()
            t0 = time.perf_counter()
            op()
            wall = time.perf_counter() - t0
            wait_for(lambda: load.batches, 5, 0.02)  # a short phase still gets the batch that overlapped it
            lag = loop_lag(d, name)
            batches = load.take()
            results[name] = {
                "wall_ms": round(wall * 1000, 1),
                "getvm_p99_us": max((b["p99_us"] for b in batches), default=None),
                "getvm_max_us": max((b["max_us"] for b in batches), default=None),
                "loop_p99_us": lag["p99_us"],
                "loop_max_us": lag["max_us"],
            }
        load.stop()
        results["hydrad_exit"] = d.stop()
    finally:
        d.cleanup()
        httpd.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'phase':34} {'wall ms':>9} {'GetVm p99 us':>13} {'GetVm max us':>13} {'loop p99 us':>12} "
          f"{'loop max us':>12}")
    for name, r in results.items():
        if isinstance(r, dict):
            print(f"{name:34} {r['wall_ms']:>9} {r['getvm_p99_us']!s:>13} {r['getvm_max_us']!s:>13} "
                  f"{r['loop_p99_us']:>12} {r['loop_max_us']:>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
