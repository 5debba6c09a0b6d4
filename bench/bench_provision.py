#!/usr/bin/python3
"""Provisioning benchmarks (issue 3): figures to report, never assertions.

  bench/bench_provision.py [--build build] [--guest build/guest] [--runs 10] [--size-mib 256] [--json]

(d) cached preparation: a cloud-image VM (image, checksum, cloud-init seed, qcow2 overlay, grow) whose image is
    in the cache and whose disk and seed are up to date: the time hydrad spends in `preparing` (from the
    preparing to the starting transition, hydrad's own event timestamps), median over --runs starts. Also the
    StartVm round trip beside the same VM started from local files (no preparation). Target: at most 20 ms.
(e) download throughput from a local HTTP server (tests/httpd.py on 127.0.0.1): daemon/fetch.c (bench_fetch:
    libcurl multi on sd-event, sha256 while writing, .part, fsync, rename) against the `curl` command writing
    the same file, alternating, medians. Target: at least 90% of curl's throughput."""
import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import benchenv


def bench_prepare(hc, build, guest, runs, tmp):
    www = f"{tmp}/www"
    os.makedirs(www)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{www}/cloud.qcow2", "64M"], check=True)
    digest = hashlib.sha256(open(f"{www}/cloud.qcow2", "rb").read()).hexdigest()
    srv = hc.HttpServer(tmp, "www", www, log=False)
    sock = f"{tmp}/run/hydra.sock"
    log = open(f"{tmp}/hydrad.log", "w")
    d = subprocess.Popen([f"{build}/hydrad", "--state-dir", f"{tmp}/state", "--run-dir", f"{tmp}/run"],
                         stdout=log, stderr=subprocess.STDOUT)
    try:
        hc.wait_for(lambda: os.path.exists(sock), 30, 0.05)
        pb = hc.pb
        channel, api = hc.connect(sock, timeout=30)
        kernel = pb.KernelBoot(kernel=f"{guest}/vmlinuz", initrd=f"{guest}/initrd.img", cmdline="console=ttyS0")
        cloud = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=kernel, disk_size_gib=1,
                          keep_pristine=True, image=pb.Source(url=f"{srv.url}/cloud.qcow2", checksum=f"sha256:{digest}"),
                          guest=pb.Guest(hostname="bench"))
        local = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=kernel)
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=cloud), timeout=10)
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=local), timeout=10)

        events = hc.EventCollector(api, role=pb.ROLE_ISOLATED).events

        # First start: download, disk, seed. Not measured.
        api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=120)
        api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)

        prep_ms, cloud_ms, local_ms = [], [], []
        for _ in range(runs):
            n = len(events)
            t0 = time.perf_counter()
            api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=120)
            cloud_ms.append((time.perf_counter() - t0) * 1000)
            api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)
            sc = [e for e in events[n:] if e.WhichOneof("kind") == "state_change"]
            t_prep = next(e.time_unix_usec for e in sc if e.state_change.to == pb.VM_STATE_PREPARING)
            t_start = next(e.time_unix_usec for e in sc if e.state_change.to == pb.VM_STATE_STARTING)
            prep_ms.append((t_start - t_prep) / 1000)
            t0 = time.perf_counter()
            api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=120)
            local_ms.append((time.perf_counter() - t0) * 1000)
            api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)
        channel.close()
        return {
            "prepare_cached_ms_median": round(statistics.median(prep_ms), 2),
            "prepare_cached_ms_max": round(max(prep_ms), 2),
            "start_cloud_image_cached_ms_median": round(statistics.median(cloud_ms), 1),
            "start_local_files_ms_median": round(statistics.median(local_ms), 1),
        }
    finally:
        d.send_signal(signal.SIGTERM)
        d.wait(timeout=60)
        srv.stop()


def bench_download(hc, build, runs, size_mib, tmp):
    www = f"{tmp}/dl"
    os.makedirs(www)
    with open(f"{www}/blob", "wb") as f:
        for _ in range(size_mib):
            f.write(os.urandom(1 << 20))
    srv = hc.HttpServer(tmp, "dl", www, log=False)
    url = f"{srv.url}/blob"
    ours, curl = [], []
    try:
        for i in range(runs):
            cache = f"{tmp}/cache{i}"
            out = subprocess.run([f"{build}/bench_fetch", url, cache], capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"bench_fetch failed: {out.stderr}")
            ours.append(json.loads(out.stdout)["seconds"])
            shutil.rmtree(cache)
            t0 = time.perf_counter()
            subprocess.run(["curl", "-s", "-f", "-o", f"{tmp}/curl.out", url], check=True)
            with open(f"{tmp}/curl.out", "rb") as f:
                os.fsync(f.fileno())
            curl.append(time.perf_counter() - t0)
            os.unlink(f"{tmp}/curl.out")
    finally:
        srv.stop()
    mib = size_mib
    return {
        "download_mib": mib,
        "download_hydrad_mib_s_median": round(mib / statistics.median(ours), 1),
        "download_curl_mib_s_median": round(mib / statistics.median(curl), 1),
        "download_ratio": round(statistics.median(curl) / statistics.median(ours), 3),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--size-mib", type=int, default=256)
    args = benchenv.parse_args(ap)
    build, guest = args.build, args.guest
    import hydra_client as hc  # noqa: E402
    tmp = tempfile.mkdtemp(prefix="hydra-bench-prov.")
    try:
        res = bench_prepare(hc, build, guest, args.runs, tmp)
        res.update(bench_download(hc, build, max(3, args.runs // 2), args.size_mib, tmp))
    finally:
        hc.kill_under(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"(d) preparation with everything cached, median of {args.runs}: {res['prepare_cached_ms_median']} ms "
          f"(max {res['prepare_cached_ms_max']} ms)  [target: <= 20 ms]")
    print(f"    StartVm round trip: cloud image, cached {res['start_cloud_image_cached_ms_median']} ms; "
          f"local files {res['start_local_files_ms_median']} ms")
    print(f"(e) download of {res['download_mib']} MiB from 127.0.0.1: hydrad {res['download_hydrad_mib_s_median']} "
          f"MiB/s, curl {res['download_curl_mib_s_median']} MiB/s: ratio {res['download_ratio']}  "
          f"[target: >= 0.9]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
