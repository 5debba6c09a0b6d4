#!/usr/bin/python3
"""How long ConsoleLog holds hydrad's loop (issue 10, item 3): figures to report, never assertions.

  bench/bench_console_log.py [--build build] [--guest build/guest] [--rounds 15] [--json]

hydrad runs with HYDRA_LOOP_STATS=1 (bench_loop.py's measure: how late a 1 ms timer fires) while 32 clients call
GetVm (bench_rpc). The registered host VM gets a full stored log, console.log.2, .1 and console.log of 1 MiB each
(3 MiB, the most hydrad keeps), and each round reads all of it with ConsoleLog; an idle round of the same length
comes first, for the machine's own noise. Prints the median over the rounds of each round's worst loop lateness
and worst GetVm latency."""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=f"{ROOT}/build")
    ap.add_argument("--guest", default=None)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    build = os.path.abspath(args.build)
    guest = os.path.abspath(args.guest or f"{build}/guest")
    os.environ.setdefault("HYDRA_PYTHONPATH", f"{build}/python")
    sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
    sys.path.insert(0, f"{ROOT}/tests/integration")
    sys.path.insert(0, f"{ROOT}/bench")
    from hydra_client import Daemon, pb  # noqa: E402
    from bench_loop import Load, loop_lag  # noqa: E402

    os.environ["HYDRA_LOOP_STATS"] = "1"
    d = Daemon(f"{build}/hydrad", prefix="hydra-bench-console-log.", extra_args=["--log-level", "info"])
    figures = {"idle": [], "ConsoleLog 3 MiB": []}
    try:
        api = d.start()
        spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG, kernel=pb.KernelBoot(kernel=f"{guest}/vmlinuz"))
        for role in (pb.ROLE_HOST, pb.ROLE_ISOLATED):
            api.RegisterVm(pb.RegisterVmRequest(role=role, spec=spec), timeout=30)
        log = f"{d.state}/host/console.log"
        for path in (f"{log}.2", f"{log}.1", log):
            with open(path, "wb") as f:
                f.write(os.urandom(MIB))
        load = Load(build, d.sock)
        time.sleep(1)
        for _ in range(args.rounds):
            for name in figures:
                loop_lag(d, name)
                load.take()
                t0 = time.perf_counter()
                if name == "idle":
                    time.sleep(0.25)
                else:
                    n = sum(len(c.data) for c in api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST),
                                                                  timeout=60))
                    assert n == 3 * MIB, n
                wall = time.perf_counter() - t0
                deadline = time.time() + 5
                while not load.batches and time.time() < deadline:
                    time.sleep(0.02)
                lag = loop_lag(d, name)
                batches = load.take()
                figures[name].append({"wall_ms": wall * 1000, "loop_max_us": lag["max_us"],
                                      "getvm_max_us": max((b["max_us"] for b in batches), default=0)})
        load.stop()
        d.stop()
    finally:
        d.cleanup()
    results = {name: {k: round(statistics.median(r[k] for r in rounds), 1) for k in rounds[0]}
               for name, rounds in figures.items()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"medians over {args.rounds} rounds")
    print(f"{'phase':20} {'wall ms':>9} {'loop max us':>12} {'GetVm max us':>13}")
    for name, r in results.items():
        print(f"{name:20} {r['wall_ms']:>9} {r['loop_max_us']:>12} {r['getvm_max_us']:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
