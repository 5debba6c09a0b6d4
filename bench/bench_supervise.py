#!/usr/bin/python3
"""Supervision benchmarks (issue 4): figures to report, never assertions.

  bench/bench_supervise.py [--build build] [--guest build/guest] [--runs 5] [--crash-runs 10] [--streams 1000]
                           [--json]

(a) re-adoption: both VMs running (the tiny guest, booted); kill -9 hydrad; start it again: the time from
    hydrad's exec until both VMs are reported running with QMP connected (an adopted VM turns `running` only once
    the QMP handshake and query-block are done). Measured twice: by polling GetVm of both VMs from the moment the
    socket accepts (the client's view), and from hydrad's own log (the `starting -> running (adopted)` line of the
    later VM; the log has millisecond timestamps). Median of --runs.
(b) death noticed: kill -9 of a running QEMU at t0 (time.time() right before os.kill); the `crashed` state change's
    time_unix_usec from WatchEvents minus t0 (hydrad's view), and its arrival at the client minus t0. Median of
    --crash-runs.
(c) --streams WatchEvents streams held by this process (grpc.aio, 100 streams per channel, each channel its own
    connection), then one start of a VM: for each stream and each state change of the start, the arrival time
    minus the event's time_unix_usec: median, p99, max (the client's own decoding of 1,000 messages on one
    Python thread is included). hydrad's RSS with 0, 100 and --streams streams open, and after they are closed.

Needs a build (cmake --build build) and the tiny guest (tests/guest/build-guest.sh); uses TCG like the tests.
At most two QEMUs run, and only in (a)."""
import argparse
import asyncio
import datetime
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import benchenv

ROOT = benchenv.ROOT
FAST_RECONNECT = [("grpc.initial_reconnect_backoff_ms", 10), ("grpc.min_reconnect_backoff_ms", 10),
                  ("grpc.max_reconnect_backoff_ms", 20)]


def percentile(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]


def log_time(line):
    """Wall-clock seconds of a hydrad log line (HH:MM:SS.mmm, local time, today)."""
    m = re.match(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) ", line)
    if not m:
        return None
    hh, mm, ss, ms = (int(x) for x in m.groups())
    t = datetime.datetime.combine(datetime.date.today(), datetime.time(hh, mm, ss, ms * 1000)).timestamp()
    if t - time.time() > 43200:  # the line is from before midnight
        t -= 86400
    return t


class Hydrad:
    def __init__(self, build, tmp):
        self.build, self.tmp = build, tmp
        self.sock = f"{tmp}/run/hydra.sock"
        self.log_path = f"{tmp}/hydrad.log"
        self.proc = None

    def start(self):
        """Execs hydrad; returns time.time() taken right before the exec."""
        self.log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        log = open(self.log_path, "a")
        t = time.time()
        self.proc = subprocess.Popen([f"{self.build}/hydrad", "--state-dir", f"{self.tmp}/state", "--run-dir",
                                      f"{self.tmp}/run"], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return t

    def log_lines(self):
        with open(self.log_path, errors="replace") as f:
            f.seek(self.log_offset)
            return f.read().splitlines()

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


# --- (a) ---

def bench_adopt(hc, d, guest, runs, tmp):
    pb = hc.pb
    channel, s = hc.connect(d.sock, options=FAST_RECONNECT)
    roles = (pb.ROLE_HOST, pb.ROLE_ISOLATED)
    for role in roles:
        s.RegisterVm(pb.RegisterVmRequest(role=role, spec=hc.guest_spec(guest)), timeout=10)
        s.StartVm(pb.StartVmRequest(role=role), timeout=60)
    hc.wait_booted(f"{tmp}/state/host/console.log")
    hc.wait_booted(f"{tmp}/state/isolated/console.log")
    pids = {r: s.GetVm(pb.GetVmRequest(role=r), timeout=10).pid for r in roles}
    channel.close()

    poll_ms, log_ms, ready_ms, first_ms = [], [], [], []
    for _ in range(runs):
        d.kill9()
        t_exec = d.start()
        # The dead hydrad's socket file is still there (refusing connections) until the new one replaces it:
        # connect by hand first, so that gRPC's reconnect backoff does not count.
        while True:
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(d.sock)
                break
            except OSError:
                time.sleep(0.0005)
            finally:
                probe.close()
        channel, s = hc.connect(d.sock, options=FAST_RECONNECT)
        while True:
            vms = [s.GetVm(pb.GetVmRequest(role=r), timeout=10) for r in roles]
            if all(v.state == pb.VM_STATE_RUNNING for v in vms):
                t_poll = time.time()
                break
            time.sleep(0.0005)
        channel.close()
        if [v.pid for v in vms] != [pids[r] for r in roles]:
            raise RuntimeError(f"not the same QEMUs: {[v.pid for v in vms]} vs {pids}")
        poll_ms.append((t_poll - t_exec) * 1000)
        lines = d.log_lines()
        adopted = [log_time(ln) for ln in lines if "starting -> running (adopted)" in ln]
        ready = [log_time(ln) for ln in lines if "hydrad ready" in ln]
        if len(adopted) == 2:
            log_ms.append((max(adopted) - t_exec) * 1000)
        if ready:
            ready_ms.append((ready[0] - t_exec) * 1000)
        first = next((t for t in map(log_time, lines) if t is not None), None)
        if first is not None:
            first_ms.append((first - t_exec) * 1000)
        time.sleep(0.5)

    channel, s = hc.connect(d.sock, options=FAST_RECONNECT)
    for role in roles:
        s.StopVm(pb.StopVmRequest(role=role, force=True), timeout=60)
    channel.close()
    return {
        "adopt_poll_ms_median": round(statistics.median(poll_ms), 1),
        "adopt_poll_ms_all": [round(x, 1) for x in poll_ms],
        "adopt_log_ms_median": round(statistics.median(log_ms), 1) if log_ms else None,
        "adopt_ready_log_ms_median": round(statistics.median(ready_ms), 1) if ready_ms else None,
        "adopt_first_log_ms_median": round(statistics.median(first_ms), 1) if first_ms else None,
    }


# --- (b) ---

def bench_crash(hc, d, runs):
    pb = hc.pb
    channel, s = hc.connect(d.sock, options=FAST_RECONNECT)
    events = hc.EventCollector(s, role=pb.ROLE_ISOLATED)

    noticed_ms, arrived_ms = [], []
    for _ in range(runs):
        vm = s.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=60)
        time.sleep(0.5)
        n = len(events)
        t0 = time.time()
        os.kill(vm.pid, signal.SIGKILL)
        hits = events.wait(lambda e: e.WhichOneof("kind") == "state_change"
                           and e.state_change.to == pb.VM_STATE_CRASHED, 10, since=n, timed=True)
        if not hits:
            raise RuntimeError("no crashed event")
        arrived, hit = hits[0]
        noticed_ms.append((hit.time_unix_usec / 1e6 - t0) * 1000)
        arrived_ms.append((arrived - t0) * 1000)
    events.close()
    channel.close()
    return {
        "crash_noticed_ms_median": round(statistics.median(noticed_ms), 2),
        "crash_noticed_ms_max": round(max(noticed_ms), 2),
        "crash_arrived_ms_median": round(statistics.median(arrived_ms), 2),
    }


# --- (c) ---

def bench_streams(grpc, hc, d, n_streams):
    pb = hc.pb
    from grpc import aio

    async def run():
        per_channel = 100
        channels, calls, received = [], [], []
        counts = {}
        pid = d.proc.pid
        rss = {"0": hc.rss_kib(pid)}
        ch0, s0 = hc.connect(d.sock, options=FAST_RECONNECT)

        async def reader(i, call):
            try:
                async for ev in call:
                    t = time.time()
                    received.append((i, t, ev))
                    counts[i] = counts.get(i, 0) + 1
            except (asyncio.CancelledError, grpc.RpcError):
                pass

        async def open_streams(n):
            """Opens n streams; returns once hydrad has subscribed all of them (it sends the headers then)."""
            tasks, new = [], []
            for _ in range(n):
                i = len(calls)
                if i % per_channel == 0:
                    channels.append(aio.insecure_channel(f"unix:{d.sock}", options=[("bench.channel", i)]))
                ch = channels[-1]
                call = ch.unary_stream("/hydra.v1.Hydra/WatchEvents",
                                       request_serializer=pb.WatchEventsRequest.SerializeToString,
                                       response_deserializer=pb.Event.FromString)(pb.WatchEventsRequest())
                calls.append(call)
                new.append(call)
                tasks.append(asyncio.ensure_future(reader(i, call)))
            await asyncio.wait_for(asyncio.gather(*(c.initial_metadata() for c in new)), 120)
            return tasks

        async def warm_up():
            """A start/stop of host: every open stream sees events, so every stream is established."""
            before = {i: counts.get(i, 0) for i in range(len(calls))}
            await asyncio.get_running_loop().run_in_executor(None, lambda: (
                s0.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=60),
                s0.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)))
            deadline = time.time() + 60
            while time.time() < deadline:
                if all(counts.get(i, 0) > before[i] for i in range(len(calls))):
                    return
                await asyncio.sleep(0.05)
            missing = sum(1 for i in range(len(calls)) if counts.get(i, 0) <= before[i])
            raise RuntimeError(f"{missing} streams got no event")

        async def measure(tasks):
            tasks += await open_streams(min(100, n_streams))
            await warm_up()
            await asyncio.sleep(1.0)
            rss["100"] = hc.rss_kib(pid)
            if n_streams > 100:
                tasks += await open_streams(n_streams - 100)
                await warm_up()
                await asyncio.sleep(1.0)
            rss[str(n_streams)] = hc.rss_kib(pid)

            received.clear()
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: s0.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=60))
            await asyncio.sleep(2.0)
            sc = [(i, t, ev) for i, t, ev in received if ev.WhichOneof("kind") == "state_change"
                  and ev.role == pb.ROLE_ISOLATED]
            by_to = {}
            for i, t, ev in sc:
                by_to.setdefault(pb.VmState.Name(ev.state_change.to), []).append((t - ev.time_unix_usec / 1e6) * 1000)
            first = min(sc, key=lambda x: x[2].seq)[2].seq if sc else None
            first_ms = [(t - ev.time_unix_usec / 1e6) * 1000 for i, t, ev in sc if ev.seq == first]
            all_ms = [x for v in by_to.values() for x in v]
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: s0.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60))
            return {
                "streams": n_streams,
                "streams_first_event": {"to": pb.VmState.Name(min(sc, key=lambda x: x[2].seq)[2].state_change.to)
                                        if sc else None, "deliveries": len(first_ms)},
                "delivery_first_ms": {"median": round(statistics.median(first_ms), 2),
                                      "p99": round(percentile(first_ms, 99), 2), "max": round(max(first_ms), 2)},
                "delivery_all_ms": {"events": len(by_to), "deliveries": len(all_ms),
                                    "median": round(statistics.median(all_ms), 2),
                                    "p99": round(percentile(all_ms, 99), 2), "max": round(max(all_ms), 2)},
                "delivery_by_state_ms_median": {k: round(statistics.median(v), 2) for k, v in by_to.items()},
                "rss_kib": rss,
            }

        tasks = []
        try:
            return await measure(tasks)
        finally:
            for call in calls:
                call.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for ch in channels:
                await ch.close()
            ch0.close()

    # Not asyncio.run(): closing the loop cancels grpc.aio's own tasks, and with Debian 12's grpcio (1.51) that
    # joins its poller thread forever. The loop is left to the process's end (main() ends with os._exit).
    res = asyncio.new_event_loop().run_until_complete(run())
    time.sleep(1.0)
    res["rss_kib"]["closed"] = hc.rss_kib(d.proc.pid)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--crash-runs", type=int, default=10)
    ap.add_argument("--streams", type=int, default=1000)
    args = benchenv.parse_args(ap)
    build, guest = args.build, args.guest
    import grpc  # noqa: E402
    import hydra_client as hc  # noqa: E402
    tmp = tempfile.mkdtemp(prefix="hydra-bench-sup.")
    d = Hydrad(build, tmp)
    res = {}
    try:
        d.start()
        res.update(bench_adopt(hc, d, guest, args.runs, tmp))
        res.update(bench_crash(hc, d, args.crash_runs))
        res.update(bench_streams(grpc, hc, d, args.streams))
    finally:
        if d.proc and d.proc.poll() is None:
            d.stop()
        # QEMUs of this run only: they run in this run's directory (hydrad starts QEMU in its VM's state dir).
        hc.kill_under(tmp)
        subprocess.run(["rm", "-rf", tmp], check=False)

    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"(a) re-adoption of 2 running VMs after kill -9, median of {args.runs}: exec -> both running with QMP "
          f"connected: {res['adopt_poll_ms_median']} ms polling GetVm (runs: {res['adopt_poll_ms_all']}), "
          f"{res['adopt_log_ms_median']} ms by hydrad's log (its first line: {res['adopt_first_log_ms_median']} ms, "
          f"ready to serve: {res['adopt_ready_log_ms_median']} ms)")
    print(f"(b) QEMU kill -9 -> crashed event, median of {args.crash_runs}: {res['crash_noticed_ms_median']} ms "
          f"(event timestamp; max {res['crash_noticed_ms_max']} ms), {res['crash_arrived_ms_median']} ms at the "
          f"client")
    f, a, r = res["delivery_first_ms"], res["delivery_all_ms"], res["rss_kib"]
    n = res["streams"]
    print(f"(c) {n} WatchEvents streams, one StartVm: first state change "
          f"({res['streams_first_event']['to']}) delivered to {res['streams_first_event']['deliveries']} streams: "
          f"median {f['median']} ms, p99 {f['p99']} ms, max {f['max']} ms; all {a['events']} state changes "
          f"({a['deliveries']} deliveries): median {a['median']} ms, p99 {a['p99']} ms, max {a['max']} ms")
    print("    median by state change: " + ", ".join(f"{k.replace('VM_STATE_', '').lower()} {v} ms"
                                                   for k, v in res["delivery_by_state_ms_median"].items()))
    per = (r[str(n)] - r["0"]) / n if n else 0
    print(f"    hydrad RSS: 0 streams {r['0'] / 1024:.1f} MiB, 100 {r['100'] / 1024:.1f} MiB, {n} "
          f"{r[str(n)] / 1024:.1f} MiB ({per:.1f} KiB per stream), after closing them {r['closed'] / 1024:.1f} MiB")
    return 0


if __name__ == "__main__":
    rc = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)  # see bench_streams: grpc.aio's threads would keep the interpreter from exiting
