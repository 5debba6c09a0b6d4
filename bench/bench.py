#!/usr/bin/python3
"""Hydra benchmarks: figures to report, never assertions.

  bench/bench.py [--build build] [--guest build/guest] [--runs 10] [--json]

(a) start overhead: StartVm until running (QEMU spawned, QMP handshake done) through hydrad, against spawning
    the same QEMU argv by hand (the one PlanVm returns, QMP on an inherited listening socket) until QMP answers
    qmp_capabilities. Runs alternate; medians over --runs.
(b) GetVm latency p50/p99 with 1 and 32 concurrent clients (bench_rpc, C, one connection per client).
(c) hydrad's RSS idle (nothing registered), and with both VMs running (after their guests booted).

Needs a build (cmake --build build, including bench_rpc) and the tiny guest (tests/guest/build-guest.sh);
tests/demo.sh makes both. Uses TCG like the tests. Targets (issue 2): (a) at most 10 ms over bare QEMU,
(b) p99 at most 1 ms with 32 clients, (c) at most 16 MiB."""
import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchenv


class Hydrad:
    def __init__(self, build, tmp, qemu_user=None):
        self.sock = f"{tmp}/run/hydra.sock"
        self.ctl = f"{build}/hydractl"
        self.log = open(f"{tmp}/hydrad.log", "w")
        conf = []
        if qemu_user:
            os.chmod(tmp, 0o755)  # QEMU, as that user, passes through to its VM's directory
            with open(f"{tmp}/hydrad.conf", "w") as f:
                f.write(f"[hydrad]\nqemu_user = {qemu_user}\n")
            conf = ["--config", f"{tmp}/hydrad.conf"]
        self.proc = subprocess.Popen([f"{build}/hydrad", "--state-dir", f"{tmp}/state", "--run-dir", f"{tmp}/run"]
                                     + conf, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if subprocess.run([self.ctl, "--socket", self.sock, "health"], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("hydrad did not come up")

    def ctl_json(self, *args):
        out = subprocess.run([self.ctl, "--socket", self.sock, "--json", *args], capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out) if out.strip() else None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def bare_qemu_until_qmp(argv, tmp):
    """Spawn argv (which expects QMP on fd 3 and the console on fd 4) the way hydrad does, time until
    qmp_capabilities is answered."""
    socks = []
    for name in ("bare-qmp.sock", "bare-console.sock"):
        if os.path.exists(f"{tmp}/{name}"):
            os.unlink(f"{tmp}/{name}")
        s = socket.socket(socket.AF_UNIX)
        s.bind(f"{tmp}/{name}")
        s.listen(1)
        socks.append(s)
    lst, console = socks
    t0 = time.perf_counter()
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(f"{tmp}/bare-qmp.sock")
    # hydrad hands QEMU the sockets as fds 3 and 4; here they keep their own numbers, so say those instead.
    argv = [a.replace("id=qmp,fd=3,", f"id=qmp,fd={lst.fileno()},")
             .replace("id=console,fd=4,", f"id=console,fd={console.fileno()},") for a in argv]
    proc = subprocess.Popen(argv, pass_fds=[lst.fileno(), console.fileno()], stdout=subprocess.DEVNULL,
                            stderr=open(f"{tmp}/bare-qemu.log", "w"))
    lst.close()
    console.close()
    f = cli.makefile("rwb")
    try:
        greeting = f.readline()
    except ConnectionResetError:
        greeting = b""
    if not greeting:
        proc.wait(timeout=30)
        raise RuntimeError(f"bare QEMU exited: {open(f'{tmp}/bare-qemu.log').read()[-1000:]}")
    f.write(b'{"execute":"qmp_capabilities"}\n')
    f.flush()
    while b'"return"' not in f.readline():
        pass
    elapsed = time.perf_counter() - t0
    f.write(b'{"execute":"quit"}\n')
    f.flush()
    proc.wait(timeout=30)
    cli.close()
    return elapsed


def write_spec(path, guest):
    with open(path, "w") as f:
        f.write(f"[vm]\ncpus = 1\nmemory = 256M\naccel = tcg\n\n[kernel]\npath = {guest}/vmlinuz\n"
                f"initrd = {guest}/initrd.img\ncmdline = console=ttyS0 panic=-1\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--qemu-user", help="hydrad.conf qemu_user (e.g. nobody): QEMU started as that user")
    args = benchenv.parse_args(ap)
    build, guest = args.build, args.guest
    from hydra_client import connect, kill_under, pb, rss_kib, wait_booted  # noqa: E402
    tmp = tempfile.mkdtemp(prefix="hydra-bench.")
    results = {}

    d = Hydrad(build, tmp, args.qemu_user)
    try:
        time.sleep(1.0)
        results["rss_idle_kib"] = rss_kib(d.proc.pid)

        channel, api = connect(d.sock, timeout=10)
        start, stop, plan = api.StartVm, api.StopVm, api.PlanVm
        for role in ("isolated", "host"):
            write_spec(f"{tmp}/{role}.ini", guest)
            d.ctl_json("register", role, "--spec", f"{tmp}/{role}.ini")

        # (a) start overhead
        argv = list(plan(pb.PlanVmRequest(role=pb.ROLE_ISOLATED), timeout=10).argv)
        argv = [a.replace(f"{tmp}/state/isolated/console.log", f"{tmp}/bare-console.log") for a in argv]
        hydra_s, bare_s = [], []
        bare_qemu_until_qmp(argv, tmp)  # warm the page cache for both
        for _ in range(args.runs):
            t0 = time.perf_counter()
            vm = start(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=60)
            hydra_s.append(time.perf_counter() - t0)
            assert vm.state == pb.VM_STATE_RUNNING
            stop(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)
            bare_s.append(bare_qemu_until_qmp(argv, tmp))
        results["start_hydrad_ms_median"] = round(statistics.median(hydra_s) * 1000, 1)
        results["start_bare_qemu_ms_median"] = round(statistics.median(bare_s) * 1000, 1)
        results["start_overhead_ms"] = round((statistics.median(hydra_s) - statistics.median(bare_s)) * 1000, 1)
        results["start_ratio"] = round(statistics.median(hydra_s) / statistics.median(bare_s), 3)

        # (b) GetVm latency (isolated registered, stopped: GetVm is pure loop work)
        # 1 client back to back; 32 clients back to back (saturation: latency is queueing, since the clients
        # share the 2 cores with hydrad and gRPC's client alone costs ~60 us CPU a call); 32 clients at 50 calls/s
        # each (1,600 calls/s).
        for key, threads, calls, rate in (("getvm_1_clients", 1, 3000, 0), ("getvm_32_clients_saturated", 32, 300, 0),
                                          ("getvm_32_clients_50hz", 32, 250, 50)):
            out = subprocess.run([f"{build}/bench_rpc", d.sock, str(threads), str(calls), str(rate)],
                                 capture_output=True, text=True, check=True).stdout
            results[key] = json.loads(out)

        # (c) RSS with both VMs running
        for role in (pb.ROLE_ISOLATED, pb.ROLE_HOST):
            start(pb.StartVmRequest(role=role), timeout=60)
        wait_booted(f"{tmp}/state/isolated/console.log")
        wait_booted(f"{tmp}/state/host/console.log")
        time.sleep(1.0)
        results["rss_two_vms_running_kib"] = rss_kib(d.proc.pid)
        for role in (pb.ROLE_ISOLATED, pb.ROLE_HOST):
            stop(pb.StopVmRequest(role=role), timeout=90)
        channel.close()
    finally:
        d.stop()
        kill_under(tmp)
        subprocess.run(["rm", "-rf", tmp], check=False)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    g1, g32 = results["getvm_1_clients"], results["getvm_32_clients_50hz"]
    sat = results["getvm_32_clients_saturated"]
    print(f"(a) StartVm until running, median of {args.runs}: hydrad {results['start_hydrad_ms_median']} ms, "
          f"bare QEMU until QMP answers {results['start_bare_qemu_ms_median']} ms: overhead "
          f"{results['start_overhead_ms']} ms (ratio {results['start_ratio']})  [target: <= 10 ms]")
    print(f"(b) GetVm, 1 client:   p50 {g1['p50_us']} us, p99 {g1['p99_us']} us, {g1['calls_per_s']} calls/s")
    print(f"    GetVm, 32 clients at 50/s each: p50 {g32['p50_us']} us, p99 {g32['p99_us']} us, "
          f"{g32['calls_per_s']} calls/s  [target: p99 <= 1000 us]")
    print(f"    GetVm, 32 clients back to back (saturation): p50 {sat['p50_us']} us, p99 {sat['p99_us']} us, "
          f"{sat['calls_per_s']} calls/s")
    print(f"(c) hydrad RSS: idle {results['rss_idle_kib'] / 1024:.1f} MiB, both VMs running "
          f"{results['rss_two_vms_running_kib'] / 1024:.1f} MiB  [target: <= 16 MiB]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
