#!/usr/bin/python3
"""Two VMs, one device, with real QEMU under TCG: the isolated VM starts after the host VM
(supervision.start_after). StartVm isolated starts host first and waits until it is ready; a dependency that is not
registered, that cannot start (a host port taken by another process) or that is never ready fails the dependent's
start with the reason; `stop host` names isolated; start --all / stop --all go in dependency order (checked on
WatchEvents' timestamps); `status` shows both; RegisterVm refuses host forwards that collide across the two VMs.
Prints "N passed, N failed"."""
import json
import os
import socket
import subprocess
import sys

import grpc

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Daemon, EventCollector, free_port, guest_spec, rpc_error  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
HYDRACTL = os.environ["HYDRACTL"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
HOST, ISO = pb.ROLE_HOST, pb.ROLE_ISOLATED
P_HOST, P_ISO, P_TAKEN = free_port(), free_port(), free_port()

check = Checks()


def state_change(role, to):
    return lambda e: e.role == role and e.WhichOneof("kind") == "state_change" and e.state_change.to == to


def ready_event(role):
    return lambda e: e.role == role and e.WhichOneof("kind") == "readiness" and e.readiness.ready


def notice(role, text):
    return lambda e: e.role == role and e.WhichOneof("kind") == "notice" and text in e.notice.message


def first_time(w, pred):
    found = w.find(pred)
    return found[0].time_unix_usec if found else None


def spec(port, start_after="", **sup):
    s = guest_spec(GUEST, supervision=pb.Supervision(start_after=start_after, **sup))
    s.forwards.extend([pb.PortForward(host_port=port, guest_port=80)])
    return s


def json_objects(text):
    """The JSON objects hydractl --json printed, one after the other."""
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        obj, i = dec.raw_decode(text, i)
        out.append(obj)
    return out


def main():
    d = Daemon(HYDRAD, prefix="hydra-pair.", extra_args=("--on-exit", "stop"))
    ok = False
    try:
        api = d.start()
        w = EventCollector(api)

        def ctl(*args, timeout=240):
            return subprocess.run([HYDRACTL, "--socket", d.sock, *args], capture_output=True, text=True,
                                  timeout=timeout)

        def get(role):
            return api.GetVm(pb.GetVmRequest(role=role), timeout=10)

        # The spec file's key, end to end.
        ini = os.path.join(d.tmp, "isolated.ini")
        with open(ini, "w") as f:
            f.write(f"[vm]\ncpus = 1\nmemory = 256M\naccel = tcg\n[kernel]\npath = {GUEST}/vmlinuz\n"
                    f"initrd = {GUEST}/initrd.img\ncmdline = console=ttyS0 panic=-1\n"
                    f"[network]\nforward = {P_ISO}:80\n[supervision]\nstart_after = host\n")
        r = ctl("register", "isolated", "--spec", ini)
        check("register isolated with [supervision] start_after = host",
              r.returncode == 0 and get(ISO).spec.supervision.start_after == "host", r.stdout + r.stderr)
        for bad, why in (("isolated", "is this VM's own role"), ("xen", "is not a role")):
            e = rpc_error(api.RegisterVm, pb.RegisterVmRequest(role=ISO, spec=spec(P_ISO, bad)), timeout=10)
            check(f"RegisterVm: start_after '{bad}' refused, naming the field",
                  e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT and
                  (e.details() or "").startswith("supervision.start_after: ") and why in e.details(),
                  e and e.details())

        e = rpc_error(api.StartVm, pb.StartVmRequest(role=ISO), timeout=30)
        check("StartVm isolated, host not registered: FAILED_PRECONDITION naming host",
              e is not None and e.code() == grpc.StatusCode.FAILED_PRECONDITION and
              "starts after 'host' (supervision.start_after), which is not registered" in (e.details() or ""),
              e and e.details())
        check("... and isolated did not move", get(ISO).state == pb.VM_STATE_DEFINED)

        api.RegisterVm(pb.RegisterVmRequest(role=HOST, spec=spec(P_HOST)), timeout=10)
        e = rpc_error(api.RegisterVm, pb.RegisterVmRequest(role=ISO, spec=spec(P_ISO, "host")), timeout=10)
        check("the same isolated spec again: unchanged", e is None)
        clash = spec(P_ISO, "host")
        clash.forwards.extend([pb.PortForward(host_addr="0.0.0.0", host_port=P_HOST, guest_port=22)])
        e = rpc_error(api.RegisterVm, pb.RegisterVmRequest(role=ISO, spec=clash), timeout=10)
        det = (e and e.details()) or ""
        check("RegisterVm: a host forward of the other VM refused, naming both roles and the port",
              e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT and "VM 'isolated'" in det and
              "VM 'host'" in det and f"host port {P_HOST}" in det, det)

        # StartVm isolated: host first, and isolated only once host is ready.
        # (--wait ready: the guest powers off on ACPI once it is ready, and the stops below do not wait a minute.)
        w.clear()
        r = ctl("start", "isolated", "--wait", "ready")
        check("hydractl start isolated --wait ready", r.returncode == 0 and "isolated: running" in r.stdout and
              "ready" in r.stdout, r.stdout + r.stderr)
        check("start's progress says it waits for host", "waiting for host to be ready" in r.stderr, r.stderr)
        host_ready, iso_prep = first_time(w, ready_event(HOST)), first_time(w, state_change(ISO, pb.VM_STATE_PREPARING))
        check("host was started, and was ready before isolated began",
              bool(w.find(state_change(HOST, pb.VM_STATE_PREPARING))) and host_ready and iso_prep and
              host_ready <= iso_prep, f"host ready {host_ready}, isolated preparing {iso_prep}")

        r = ctl("status")
        rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.split()}
        check("status: both VMs at a glance, isolated starts after host",
              "STARTS AFTER" in r.stdout and "running" in rows.get("host", "") and
              "running" in rows.get("isolated", "") and " host " in rows.get("isolated", "") and
              str(get(HOST).pid) in rows.get("host", ""), r.stdout)

        # stop host while isolated runs: stopped, with a warning naming isolated.
        w.clear()
        r = ctl("stop", "host")
        check("stop host: stopped, hydractl warns that isolated starts after it",
              r.returncode == 0 and "warning: isolated starts after host" in r.stderr, r.stdout + r.stderr)
        check("... and hydrad's notice on host names isolated",
              bool(w.find(notice(HOST, "'isolated' starts after 'host'"))))
        check("... isolated keeps running", get(ISO).state == pb.VM_STATE_RUNNING)

        # start --all / stop --all: dependency order, and the reverse. isolated still runs: start --all starts host,
        # then finds isolated running (from stopped, at the end: isolated begins only once host is ready).
        r = ctl("start", "--all", "--wait", "ready", "--json")
        objs = json_objects(r.stdout) if r.returncode == 0 else []
        check("start --all --wait ready --json: host, then isolated, both ready",
              [o["role"] for o in objs] == ["host", "isolated"] and all(o["ready"] for o in objs),
              r.stdout + r.stderr)
        w.clear()
        r = ctl("stop", "--all", "--json")
        objs = json_objects(r.stdout) if r.returncode == 0 else []
        check("stop --all --json: isolated, then host",
              [o["role"] for o in objs] == ["isolated", "host"] and all(o["state"] == "stopped" for o in objs),
              r.stdout + r.stderr)
        iso_stopped, host_stopping = (first_time(w, state_change(ISO, pb.VM_STATE_STOPPED)),
                                      first_time(w, state_change(HOST, pb.VM_STATE_STOPPING)))
        check("stop --all: host stopping only after isolated stopped",
              iso_stopped and host_stopping and iso_stopped <= host_stopping, f"{iso_stopped} {host_stopping}")

        # A host port another process holds: said before QEMU runs, and it fails the dependent's start.
        taken = socket.socket()
        taken.bind(("127.0.0.1", P_TAKEN))
        taken.listen(1)
        api.RegisterVm(pb.RegisterVmRequest(role=HOST, spec=spec(P_TAKEN)), timeout=10)
        busy = f"host port 127.0.0.1:{P_TAKEN} (forward to guest port 80) is in use by another process"
        e = rpc_error(api.StartVm, pb.StartVmRequest(role=HOST), timeout=60)
        check("StartVm host, port taken: the clear error", e is not None and
              e.code() == grpc.StatusCode.FAILED_PRECONDITION and busy in (e.details() or ""), e and e.details())
        check("... host failed with it", get(HOST).state == pb.VM_STATE_FAILED and busy in get(HOST).last_error)
        w.clear()
        r = ctl("start", "isolated")
        check("start isolated: fails naming host and why", r.returncode == 1 and
              "FAILED_PRECONDITION: VM 'isolated' starts after 'host' (supervision.start_after), which did not "
              "become ready: " in r.stderr and busy in r.stderr, r.stderr)
        check("... isolated was not started", not w.find(state_change(ISO, pb.VM_STATE_PREPARING)) and
              get(ISO).state == pb.VM_STATE_STOPPED)
        taken.close()

        # A dependency that never becomes ready: its ready_timeout fails the dependent's start.
        never = spec(P_HOST, probe=pb.PROBE_CONSOLE, probe_pattern="no such line", ready_timeout_seconds=3)
        api.RegisterVm(pb.RegisterVmRequest(role=HOST, spec=never), timeout=10)
        w.clear()
        e = rpc_error(api.StartVm, pb.StartVmRequest(role=ISO, wait=pb.WAIT_FOR_READY), timeout=120)
        det = (e and e.details()) or ""
        check("StartVm isolated, host never ready: fails with host's ready-timeout",
              e is not None and e.code() == grpc.StatusCode.FAILED_PRECONDITION and
              "which did not become ready: not ready within 3 s" in det, det)
        check("... host failed (ready-timeout), isolated never started",
              bool(w.find(state_change(HOST, pb.VM_STATE_FAILED))) and
              not w.find(state_change(ISO, pb.VM_STATE_PREPARING)))

        # start --all from both stopped: isolated begins only after host is ready. Then hydrad --on-exit stop: the VM
        # that starts after the other one is stopped first.
        api.RegisterVm(pb.RegisterVmRequest(role=HOST, spec=spec(P_HOST)), timeout=10)
        w.clear()
        r = ctl("start", "--all", "--wait", "ready")
        check("start --all from stopped", r.returncode == 0 and r.stdout.startswith("host: running"),
              r.stdout + r.stderr)
        host_ready, iso_prep = first_time(w, ready_event(HOST)), first_time(w, state_change(ISO, pb.VM_STATE_PREPARING))
        check("start --all: isolated began after host was ready", host_ready and iso_prep and host_ready <= iso_prep,
              f"host ready {host_ready}, isolated preparing {iso_prep}")
        w.close()
        before = len(d.log())
        rc = d.stop()
        check("hydrad exits cleanly (no leak under ASan)", rc == 0)
        log = d.log()[before:]
        iso_stopped, host_stopping = (log.find("VM 'isolated': stopping -> stopped"),
                                      log.find("VM 'host': running -> stopping"))
        check("--on-exit stop: host stopping only after isolated stopped",
              0 <= iso_stopped < host_stopping, f"{iso_stopped} {host_stopping}")
        ok = check.failed == 0
    finally:
        if check.failed or not ok:
            print("--- hydrad log (tail) ---")
            print("\n".join(d.log().splitlines()[-80:]))
        d.cleanup()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
