#!/usr/bin/python3
"""ConsoleLog against stored logs written by the test (no guest runs): the answer, byte for byte, across the rotated
files; the loop keeps answering GetVm while a large stored log is read (issue 10: the read is a worker's, not the
loop's); a client that cancels, and a hydrad that shuts down, while the read runs."""
import os
import sys
import threading
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])

import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Daemon  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
MIB = 1 << 20
READ_MAX = 16 * MIB  # what one stream's queue holds: ConsoleLog sends at most the last 16 MiB


def console_log(api, **kw):
    return b"".join(c.data for c in api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST, **kw), timeout=60))


def main():
    check = Checks()
    d = Daemon(HYDRAD, prefix="hydra-console-log.")
    try:
        api = d.start()
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=pb.VmSpec(
            cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=pb.KernelBoot(kernel=f"{GUEST}/vmlinuz"))),
            timeout=30)
        log = f"{d.state}/host/console.log"
        check("an empty stored log: an empty answer", console_log(api) == b"")

        # Three files of distinct bytes: console.log.2 (oldest), .1, console.log.
        parts = [os.urandom(MIB) for _ in range(3)]
        for path, data in zip((f"{log}.2", f"{log}.1", log), parts):
            with open(path, "wb") as f:
                f.write(data)
        whole = b"".join(parts)
        check("ConsoleLog: the three files, oldest first, byte for byte", console_log(api) == whole)
        check("tail_bytes across a file boundary", console_log(api, tail_bytes=MIB + 100) == whole[-(MIB + 100):])
        check("tail_bytes larger than the log: all of it", console_log(api, tail_bytes=10 * MIB) == whole)

        # A sparse console.log.2 far larger than a log ever grows (a stray file, a larger limit of old): the loop
        # keeps answering while it is read, and the answer is the last 16 MiB.
        with open(f"{log}.2", "wb") as f:
            f.truncate(4096 * MIB)
        lat = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                t0 = time.perf_counter()
                api.GetVm(pb.GetVmRequest(role=pb.ROLE_HOST), timeout=30)
                lat.append(time.perf_counter() - t0)
                time.sleep(0.005)
        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.3)
        t0 = time.perf_counter()
        big = console_log(api)
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        stop.set()
        t.join()
        worst = max(lat)
        print(f"# ConsoleLog of a 4 GiB sparse log: {wall * 1000:.0f} ms; GetVm meanwhile: {len(lat)} calls, "
              f"worst {worst * 1000:.1f} ms", flush=True)
        check("a 4 GiB stored log: the answer is its last 16 MiB",
              len(big) == READ_MAX and big[-2 * MIB:] == parts[1] + parts[2] and big[:-2 * MIB] == bytes(READ_MAX - 2 * MIB))
        check("GetVm answered throughout (worst < 1 s; the read held the loop for 17 s when it was the loop's)",
              worst < 1.0)

        # A client that goes away while its read runs; hydrad carries on.
        for _ in range(5):
            call = api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST, follow=True), timeout=60)
            next(call, None)
            call.cancel()
        check("cancelled reads: hydrad still answers", api.GetVm(pb.GetVmRequest(role=pb.ROLE_HOST), timeout=10)
              .state == pb.VM_STATE_DEFINED)

        # Shutting down while reads run: the streams end UNAVAILABLE or complete, hydrad exits cleanly.
        calls = [api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST, follow=True), timeout=60) for _ in range(3)]
        time.sleep(0.01)
        rc = d.stop(timeout=30)
        check(f"SIGTERM during reads: hydrad exits 0 (got {rc})", rc == 0)
        for c in calls:
            try:
                for _ in c:
                    pass
            except grpc.RpcError:
                pass
    finally:
        d.cleanup()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
