#!/usr/bin/python3
"""Supervision with real QEMU under TCG, through the gRPC API: the serial console (console.sock, console.log,
ConsoleLog), readiness probes (console pattern, TCP through a forward, containerd's Version through the
containerd forward), the CRI socket used by containerd's own `ctr`, a guest kernel panic (pvpanic), the restart
policy (backoff, giving up, a guest that shut itself down), and WatchEvents. Prints "N passed, N failed"."""
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import (Checks, ConsoleClient, Daemon, EventCollector, Hydra, free_port, guest_spec,  # noqa: E402
                          rpc_error, wait_for)

HYDRAD = os.environ["HYDRAD"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
SHELL_CMDLINE = "console=ttyS0 panic=-1 hydra.shell=1"

check = Checks()


def state_change(to, reason=None, role=pb.ROLE_HOST):
    def pred(e):
        return (e.role == role and e.WhichOneof("kind") == "state_change" and e.state_change.to == to and
                (reason is None or e.state_change.reason == reason))
    return pred


def get(api, role=pb.ROLE_HOST):
    return api.GetVm(pb.GetVmRequest(role=role), timeout=10)


def test_console_ready_panic_restart(d, api):
    sup = pb.Supervision(restart=pb.RESTART_ON_FAILURE, max_restarts=2, restart_window_seconds=600)
    spec = guest_spec(GUEST, cmdline=SHELL_CMDLINE, supervision=sup)
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=spec), timeout=10)
    w = EventCollector(api, settle=0)

    vm = api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST, wait=pb.WAIT_FOR_READY, timeout_seconds=180), timeout=200)
    check("start --wait ready: running and ready (console pattern: the login prompt)",
          vm.state == pb.VM_STATE_RUNNING and vm.ready)
    check("ready since a moment ago", abs(vm.ready_since_unix_usec / 1e6 - time.time()) < 60)
    check("ready detail names the console match", "console" in vm.ready_detail)
    check("a readiness event was sent", w.wait(lambda e: e.WhichOneof("kind") == "readiness" and e.readiness.ready, 5))
    first_pid = vm.pid

    log_path = f"{d.state}/host/console.log"
    with open(log_path, "rb") as f:
        log = f.read()
    check("console.log has the boot from its first line (QEMU starts paused until the console is connected)",
          b"Linux version" in log and b"hydra-guest login:" in log)
    check("console.sock is there, mode 0660",
          vm.console_socket == f"{d.run}/host/console.sock" and
          stat.S_IMODE(os.stat(vm.console_socket).st_mode) == 0o660)

    stored = b"".join(c.data for c in api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST), timeout=30))
    check("ConsoleLog returns the stored log", stored.startswith(log[:4096]) and len(stored) >= len(log))
    tail = b"".join(c.data for c in api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST, tail_bytes=100),
                                                    timeout=30))
    check("ConsoleLog tail_bytes=100: the last 100 bytes", len(tail) == 100 and stored.endswith(tail))

    # A person types into the console; the guest's shell computes; ConsoleLog -f and the person both see it.
    follow = api.ConsoleLog(pb.ConsoleLogRequest(role=pb.ROLE_HOST, follow=True, tail_bytes=1))
    followed = []

    def read_follow():
        try:
            for c in follow:
                followed.append(c.data)
        except grpc.RpcError:
            pass
    threading.Thread(target=read_follow, daemon=True).start()
    person = ConsoleClient(vm.console_socket)
    other = ConsoleClient(vm.console_socket)
    check("a shell on the guest's console", person.shell_prompt(60))
    person.send("echo hydra-marker-$((6*7))\n")
    check("the guest's shell answers the person at the console", person.read_until("hydra-marker-42", 30))
    check("a second attached client sees it too", other.read_until("hydra-marker-42", 10))
    check("ConsoleLog follow streams it", wait_for(lambda: b"hydra-marker-42" in b"".join(followed), 10))
    check("and it is in console.log", wait_for(lambda: b"hydra-marker-42" in open(log_path, "rb").read(), 5))
    other.close()

    # A kernel panic: pvpanic -> GUEST_PANICKED -> crashed (guest-panic) -> restarted after 1 s.
    person.send("echo c > /proc/sysrq-trigger\n")
    check("QMP GUEST_PANICKED event",
          w.wait(lambda e: e.WhichOneof("kind") == "qmp_event" and e.qmp_event.name == "GUEST_PANICKED", 60))
    crashed = w.wait(state_change(pb.VM_STATE_CRASHED), 30)
    check("state crashed after the panic", bool(crashed))
    check("last exit reason guest-panic", bool(crashed) and crashed[0].vm.last_exit.reason == "guest-panic")
    check("a notice says when it restarts",
          w.wait(lambda e: e.WhichOneof("kind") == "notice" and "restarting in 1 s" in e.notice.message, 10))
    check("restarted by the policy",
          bool(w.wait(state_change(pb.VM_STATE_PREPARING, "restart"), 15)) and
          bool(w.wait(lambda e: state_change(pb.VM_STATE_RUNNING)(e) and e.vm.pid != first_pid, 60)))
    vm = wait_for(lambda: (lambda v: v if v.ready else None)(get(api)), 120)
    check("ready again after the restart, restart_count 1", bool(vm) and vm.restart_count == 1)
    person.close()

    # kill -9 of QEMU: crashed (signal 9), restarted after 2 s (the backoff doubles).
    w.clear()
    pid = get(api).pid
    t0 = time.time()
    os.kill(pid, 9)
    crashed = w.wait(state_change(pb.VM_STATE_CRASHED), 10)
    check("kill -9 of QEMU: crashed", bool(crashed))
    if crashed:
        ev = crashed[0]
        check("the death is noticed within 1 s", ev.time_unix_usec / 1e6 - t0 < 1.0)
        check("last exit: signal 9, reason crashed",
              ev.vm.last_exit.signal == 9 and ev.vm.last_exit.reason == "crashed")
        check("next restart scheduled about 2 s later",
              1.5 < ev.vm.next_restart_unix_usec / 1e6 - t0 < 3.5 if ev.vm.next_restart_unix_usec else
              bool(wait_for(lambda: get(api).next_restart_unix_usec, 2)))
    check("restarted again",
          bool(w.wait(lambda e: state_change(pb.VM_STATE_RUNNING)(e) and e.vm.restart_count == 2, 60)))

    # A third death within the window with max_restarts 2: the policy gives up, with the reason.
    w.clear()
    os.kill(get(api).pid, 9)
    check("third death: crashed", bool(w.wait(state_change(pb.VM_STATE_CRASHED), 10)))
    gave_up = w.wait(lambda e: e.WhichOneof("kind") == "notice" and "gave up" in e.notice.message, 10)
    check("the policy gives up, and says why", bool(gave_up) and "3 deaths within 600 s" in gave_up[0].notice.message)
    time.sleep(3)
    vm = get(api)
    check("no restart after giving up", vm.state == pb.VM_STATE_CRASHED and vm.next_restart_unix_usec == 0 and
          not w.find(state_change(pb.VM_STATE_PREPARING)))
    check("GetVm's last_error carries the reason", "restart policy on-failure gave up" in vm.last_error)

    # A client's start resets the count; a guest that powers itself off is not a failure (on-failure).
    vm = api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST, wait=pb.WAIT_FOR_READY, timeout_seconds=180), timeout=200)
    check("a client's start after giving up works", vm.state == pb.VM_STATE_RUNNING and vm.ready)
    w.clear()
    person = ConsoleClient(vm.console_socket)
    person.shell_prompt(60)
    person.send("poweroff -f\n")
    stopped = w.wait(state_change(pb.VM_STATE_STOPPED), 60)
    check("guest poweroff: stopped (guest-shutdown)", bool(stopped) and stopped[0].state_change.reason == "guest-shutdown")
    time.sleep(2.5)
    check("on-failure does not restart a guest that shut itself down",
          get(api).state == pb.VM_STATE_STOPPED and not w.find(state_change(pb.VM_STATE_PREPARING)))
    person.close()

    # always: the same poweroff is restarted; a StopVm during the backoff cancels the restart.
    sup = pb.Supervision(restart=pb.RESTART_ALWAYS)
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=guest_spec(GUEST, cmdline=SHELL_CMDLINE,
                                                                               supervision=sup)), timeout=10)
    vm = api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST, wait=pb.WAIT_FOR_READY, timeout_seconds=180), timeout=200)
    check("registered with restart always (defaults max_restarts 5, window 600 s)",
          vm.spec.supervision.max_restarts == 5 and vm.spec.supervision.restart_window_seconds == 600)
    w.clear()
    person = ConsoleClient(vm.console_socket)
    person.shell_prompt(60)
    person.send("poweroff -f\n")
    check("always: a guest poweroff is restarted",
          bool(w.wait(state_change(pb.VM_STATE_PREPARING, "restart"), 60)) and
          bool(w.wait(state_change(pb.VM_STATE_RUNNING), 60)))
    person.close()
    w.clear()
    os.kill(get(api).pid, 9)
    check("crashed again", bool(w.wait(state_change(pb.VM_STATE_CRASHED), 10)))
    vm = api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST), timeout=30)
    time.sleep(3)
    vm = get(api)
    check("StopVm during the backoff cancels the restart",
          vm.next_restart_unix_usec == 0 and vm.pid == 0 and not w.find(state_change(pb.VM_STATE_PREPARING)))
    w.close()


def test_tcp_probe(api):
    port, dead_port = free_port(), free_port()
    fw = [pb.PortForward(host_port=port, guest_port=80), pb.PortForward(host_port=dead_port, guest_port=81)]
    spec = guest_spec(GUEST, supervision=pb.Supervision(probe=pb.PROBE_TCP, probe_port=80))
    spec.forwards.extend(fw)
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=spec), timeout=10)
    vm = api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED, wait=pb.WAIT_FOR_READY, timeout_seconds=180),
                     timeout=200)
    check("tcp probe through the forward to the guest's httpd: ready", vm.ready and "tcp" in vm.ready_detail)
    check("no CRI socket without a containerd forward", vm.cri_socket == "")
    api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)

    spec.supervision.probe_port = 81  # forwarded, but nothing listens in the guest
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=spec), timeout=10)
    e = rpc_error(api.StartVm, pb.StartVmRequest(role=pb.ROLE_ISOLATED, wait=pb.WAIT_FOR_READY, timeout_seconds=25),
                  timeout=60)
    vm = get(api, pb.ROLE_ISOLATED)
    check("tcp probe to a port nothing listens on: start --wait ready times out, the VM runs on",
          e is not None and e.code() == grpc.StatusCode.DEADLINE_EXCEEDED and vm.state == pb.VM_STATE_RUNNING and
          not vm.ready)
    check("the timeout says why it is not ready", e is not None and "not ready" in e.details())
    api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)

    spec.supervision.probe = pb.PROBE_NONE
    spec.supervision.probe_port = 0
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=spec), timeout=10)
    e = rpc_error(api.StartVm, pb.StartVmRequest(role=pb.ROLE_ISOLATED, wait=pb.WAIT_FOR_READY), timeout=30)
    check("--wait ready without a probe: refused at once",
          e is not None and e.code() == grpc.StatusCode.INVALID_ARGUMENT and "no readiness probe" in e.details())


class TcpToUnix(threading.Thread):
    """127.0.0.1:PORT -> a unix socket, one thread pair per connection: the part of the guest's TCP proxy
    (csi-grpc-proxy) that this test puts on the host, since containerd's own TCP listener serves CRI only."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.start()

    @staticmethod
    def pump(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def run(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(self.path)
            except OSError:
                conn.close()
                continue
            threading.Thread(target=self.pump, args=(conn, up), daemon=True).start()
            threading.Thread(target=self.pump, args=(up, conn), daemon=True).start()


def test_lost_events(d, api):
    """A client that does not read: its queue (256 events) drops the oldest and says so with a lost event."""
    # Its own channel, with the HTTP/2 window left at 64 KiB (no BDP probing), so that it fills.
    channel = grpc.insecure_channel(f"unix:{d.sock}", options=[("grpc.http2.bdp_probe", 0)])
    stream = Hydra(channel).WatchEvents(pb.WatchEventsRequest(role=pb.ROLE_HOST))
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=guest_spec(GUEST)), timeout=10)
    for _ in range(80):
        api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=60)
        api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)
    check("GetVm still answers while a stream is stuck", get(api).state == pb.VM_STATE_STOPPED)

    reader = EventCollector(None, stream=stream, settle=0)
    time.sleep(5)  # everything was sent already: the backlog drains at once
    reader.close(10)
    channel.close()
    events = reader.events

    lost = [(i, e.lost.count) for i, e in enumerate(events) if e.WhichOneof("kind") == "lost"]
    check("the slow stream got a lost event", len(lost) > 0 and all(n > 0 for _, n in lost))
    ok = bool(lost)
    for i, n in lost:
        ok = ok and 0 < i < len(events) - 1 and events[i + 1].seq - events[i - 1].seq - 1 == n
    check("each lost count is exactly the gap in seq where it stands", ok)
    seqs = [e.seq for e in events if e.WhichOneof("kind") != "lost"]
    check("no other gap: everything else arrived in order",
          sum(b - a - 1 for a, b in zip(seqs, seqs[1:])) == sum(n for _, n in lost) and seqs == sorted(seqs))
    check("the stream ends with the last stop", bool(events) and events[-1].WhichOneof("kind") == "state_change" and
          events[-1].state_change.to == pb.VM_STATE_STOPPED)


def start_containerd(tmp):
    """A real containerd on the host; the guest relays its port 35000 to it."""
    cfg = f"{tmp}/containerd.toml"
    with open(cfg, "w") as f:
        f.write(f"""version = 2
root = "{tmp}/root"
state = "{tmp}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{tmp}/containerd.sock"
""")
    log = open(f"{tmp}/containerd.log", "w")
    proc = subprocess.Popen(["containerd", "--config", cfg], stdout=log, stderr=subprocess.STDOUT)
    if not wait_for(lambda: os.path.exists(f"{tmp}/containerd.sock"), 30):
        proc.kill()
        raise RuntimeError("containerd did not start: " + open(f"{tmp}/containerd.log").read()[-2000:])
    return proc, TcpToUnix(f"{tmp}/containerd.sock").port


def test_cri_socket(d, api):
    tmp = tempfile.mkdtemp(prefix="hydra-containerd.", dir=d.tmp)
    containerd, cport = start_containerd(tmp)
    try:
        server = subprocess.run(["ctr", "--address", f"{tmp}/containerd.sock", "version"], capture_output=True,
                                text=True, timeout=30).stdout
        fwd = free_port()
        spec = guest_spec(GUEST, cmdline=SHELL_CMDLINE,
                          supervision=pb.Supervision(probe=pb.PROBE_CONTAINERD))
        spec.forwards.extend([pb.PortForward(host_port=fwd, guest_port=35000)])
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=spec), timeout=10)
        vm = api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED, timeout_seconds=120), timeout=150)
        check("containerd probe: probe_port defaults to 35000", vm.spec.supervision.probe_port == 35000)
        cri = f"{d.run}/isolated/containerd.sock"
        check("the CRI socket is there while the isolated VM runs, mode 0660",
              vm.cri_socket == cri and stat.S_IMODE(os.stat(cri).st_mode) == 0o660)
        check("not ready while nothing answers on the guest's port 35000", not get(api, pb.ROLE_ISOLATED).ready)

        # In the guest, port 35000 relays to the host's containerd (10.0.2.2 is the host under user networking).
        # -ll: one persistent listener that forks per connection. A loop of single `nc -l -e` (the first version of
        # this test) serves one connection at a time, and the exec'ed relay keeps the listening socket: the probe's
        # and ctr's connections then wait in a backlog nobody accepts from, and the check failed one run in three.
        person = ConsoleClient(vm.console_socket)
        check("a shell on the guest's console", person.shell_prompt(120))
        person.send(f"\nnc -ll -p 35000 -e nc 10.0.2.2 {cport} >/dev/null 2>&1 &\n")
        check("the guest's shell echoes the relay command", person.read_until(f"10.0.2.2 {cport} >/dev/null", 30))
        vm = wait_for(lambda: (lambda v: v if v.ready else None)(get(api, pb.ROLE_ISOLATED)), 120)
        if not check("containerd probe: ready, with containerd's version", bool(vm) and "containerd" in vm.ready_detail):
            print("# probe detail:", get(api, pb.ROLE_ISOLATED).ready_detail)
            person.send("\necho diag-begin; ps; netstat -tan; ip -4 addr; echo diag-end\n")
            person.read_until("diag-end\r\n", 20)
            print("# console:", person.data.decode(errors="replace")[-4000:])
        out = subprocess.run(["ctr", "--address", cri, "version"], capture_output=True, text=True, timeout=60)
        if not check("ctr --address RUN/isolated/containerd.sock version: answered by the guest's containerd",
                     out.returncode == 0 and "Server:" in out.stdout):
            print("# ctr:", out.returncode, out.stdout, out.stderr)

        def server_version(text):
            return text.split("Server:", 1)[1].strip().splitlines()[0] if "Server:" in text else None
        check("the same server version as containerd's own socket",
              server_version(server) is not None and server_version(server) == server_version(out.stdout))
        person.close()
        api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)
        check("the CRI socket stays when the VM stops (it answers UNAVAILABLE: test_cri_route.py)",
              os.path.exists(cri) and get(api, pb.ROLE_ISOLATED).cri_socket == cri)
    finally:
        containerd.terminate()
        containerd.wait(timeout=30)


def main():
    d = Daemon(HYDRAD, prefix="hydra-sup.")
    ok = False
    try:
        api = d.start()
        test_console_ready_panic_restart(d, api)
        test_tcp_probe(api)
        test_cri_socket(d, api)
        test_lost_events(d, api)
        rc = d.stop()
        check("hydrad exits cleanly (no leak under ASan)", rc == 0)
        ok = check.failed == 0
    finally:
        if check.failed or not ok:
            print("--- hydrad log (tail) ---")
            print("\n".join(d.log().splitlines()[-80:]))
        d.cleanup()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
