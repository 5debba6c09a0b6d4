#!/usr/bin/python3
"""The two routes to the isolated VM's containerd, with two tiny guests under TCG (host and isolated, each with a
shell on its console). The tiny guest has no containerd: in the isolated guest, busybox httpd on containerd's port
(35000, the forward's guest side) stands in for it, serving a token written there through its console, so an
answer that carries the token came from the isolated guest and nowhere else.

- The host's CRI socket, RUN/isolated/containerd.sock (crismux on a node): while the isolated VM is not running,
  a CRI call gets UNAVAILABLE at once with the reason ("VM 'isolated' is stopped: ..."); while it runs, the socket
  forwards bytes to the guest; also across a restart of hydrad (adoption); gone with DestroyVm.
- crismux in the host VM: tcp:10.0.2.2:PORT, QEMU user networking's gateway, which is the host's loopback, where
  the isolated VM's forward listens: `wget http://10.0.2.2:PORT/` typed into the host guest's shell gets the
  token; with the isolated VM stopped, the connection is refused.
Prints "N passed, N failed"."""
import os
import re
import secrets
import socket
import stat
import sys
import threading
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, ConsoleClient, Daemon, free_port, guest_spec, note, wait_for  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
SHELL_CMDLINE = "console=ttyS0 panic=-1 hydra.shell=1"
CONTAINERD_PORT = 35000  # the guest port of the forward that makes the CRI socket (SPEC_DEFAULT_CONTAINERD_PORT)

check = Checks()


def cri_version(path, timeout=10):
    """CRI's RuntimeService/Version on the socket, raw (no CRI stubs here): (status code or None, details,
    seconds it took)."""
    channel = grpc.insecure_channel(f"unix:{path}")
    call = channel.unary_unary("/runtime.v1.RuntimeService/Version", request_serializer=None,
                               response_deserializer=None)
    t0 = time.monotonic()
    try:
        call(b"", timeout=timeout)
        return None, "answered", time.monotonic() - t0
    except grpc.RpcError as e:
        return e.code(), e.details(), time.monotonic() - t0
    finally:
        channel.close()


def http_get_unix(path, timeout=20):
    """GET / through a unix socket: the bytes that came back."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    data = b""
    try:
        s.connect(path)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        note(f"GET through {path}: {e}")
    finally:
        s.close()
    return data


def shell(console, command, timeout=60):
    """Runs command in the guest's shell at console: (its exit status or None, what it printed)."""
    n = secrets.token_hex(3)
    console.data = b""
    console.send(f"{command}; echo rc-{n}=$?\n")
    pattern = re.compile(rb"rc-" + n.encode() + rb"=(\d+)")
    deadline = time.time() + timeout
    while not pattern.search(console.data) and time.time() < deadline:
        try:
            chunk = console.sock.recv(65536)
        except socket.timeout:
            continue
        if not chunk:
            break
        console.data += chunk
    m = pattern.search(console.data)
    text = console.data.decode(errors="replace")
    return (int(m.group(1)) if m else None), text


class IdleClient(threading.Thread):
    """Connects to a unix socket, sends nothing, reads until the server closes: closed_after, seconds."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.since = time.monotonic()
        self.closed_after = None
        self.start()

    def run(self):
        try:
            while self.sock.recv(65536):
                pass
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.since
        self.sock.close()


def get(api, role):
    return api.GetVm(pb.GetVmRequest(role=role), timeout=10)


def expect_unavailable(cri, what, needles):
    code, details, took = cri_version(cri)
    check(f"{what}: a CRI call gets UNAVAILABLE at once ({took:.2f} s), saying why",
          code == grpc.StatusCode.UNAVAILABLE and took < 2 and all(n in details for n in needles),
          f"{code} after {took:.2f} s: {details!r}")


def main():
    d = Daemon(HYDRAD, prefix="hydra-cri.")
    token = f"isolated-{secrets.token_hex(8)}"
    ok = False
    try:
        api = d.start()
        cri = f"{d.run}/isolated/containerd.sock"
        port = free_port()
        iso = guest_spec(GUEST, cmdline=SHELL_CMDLINE)
        iso.forwards.extend([pb.PortForward(host_port=port, guest_port=CONTAINERD_PORT)])
        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=iso), timeout=30)

        # Registered, never started: the socket is there and answers.
        vm = get(api, pb.ROLE_ISOLATED)
        check("registered with the containerd forward: the CRI socket is there before any start, mode 0660",
              vm.cri_socket == cri and os.path.exists(cri) and stat.S_IMODE(os.stat(cri).st_mode) == 0o660,
              f"cri_socket {vm.cri_socket!r}")
        expect_unavailable(cri, "the isolated VM never started",
                           ["VM 'isolated' has not been started", "containerd is not running",
                            "hydractl start isolated"])

        # A client that connects and says nothing is not kept for ever: the fallback's connections age out, so that
        # a client that keeps its connection (kubelet) comes back through the socket once the VM runs.
        idle = IdleClient(cri)

        api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=guest_spec(GUEST, cmdline=SHELL_CMDLINE)),
                       timeout=30)
        api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=120)
        api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=120)

        # The isolated guest: httpd on containerd's port, serving the token.
        iso_console = ConsoleClient(f"{d.run}/isolated/console.sock")
        check("a shell on the isolated guest's console", iso_console.shell_prompt(120))
        rc, out = shell(iso_console, f"echo {token} >/www/index.html && httpd -p {CONTAINERD_PORT} -h /www")
        check("the isolated guest serves the token on containerd's port", rc == 0, out[-500:])
        iso_console.close()

        got = wait_for(lambda: http_get_unix(cri), 30)
        check("the isolated VM runs: the CRI socket forwards bytes to the guest (the token came back)",
              token.encode() in got, got[-300:])

        idle.join(30)
        check("a silent connection made while the VM was down was closed within 10 s (GOAWAY after 5 s)",
              idle.closed_after is not None and idle.closed_after < 10, f"closed after {idle.closed_after}")

        # crismux inside the host VM: tcp:10.0.2.2:PORT. (No `wget -T`: it segfaults in Debian 12's busybox-static.)
        host_console = ConsoleClient(f"{d.run}/host/console.sock")
        check("a shell on the host guest's console", host_console.shell_prompt(120))
        rc, out = shell(host_console, "wget -qO- http://127.0.0.1/")
        check("the host guest's own httpd answers hydra-guest, not the token",
              rc == 0 and "hydra-guest" in out and token not in out, out[-300:])
        rc, out = shell(host_console, f"wget -qO- http://10.0.2.2:{port}/")
        check(f"from inside the host guest, http://10.0.2.2:{port}/ is the isolated guest's httpd (the token)",
              rc == 0 and token in out, out[-500:])
        host_console.close()

        # hydrad restarts (the VMs run on): the socket goes with it, and is back, forwarding, after adoption.
        rc = d.stop()
        check("hydrad exits (the VMs run on); the CRI socket went with it", rc == 0 and not os.path.exists(cri))
        api = d.start()
        vm = wait_for(lambda: (lambda v: v if v.state == pb.VM_STATE_RUNNING else None)(get(api, pb.ROLE_ISOLATED)),
                      60)
        check("the restarted hydrad adopted the isolated VM", bool(vm))
        got = http_get_unix(cri)
        check("after adoption the CRI socket forwards to the same guest (the token)", token.encode() in got,
              got[-300:])

        # Stopped: UNAVAILABLE with the reason; the route from the host VM is refused.
        api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)
        check("the CRI socket stays while the isolated VM is stopped",
              os.path.exists(cri) and get(api, pb.ROLE_ISOLATED).cri_socket == cri)
        expect_unavailable(cri, "the isolated VM stopped",
                           ["VM 'isolated' is stopped: its containerd is not running (hydractl start isolated)"])
        host_console = ConsoleClient(f"{d.run}/host/console.sock")
        rc, out = shell(host_console, f"wget -qO- http://10.0.2.2:{port}/")
        check("with the isolated VM stopped, the same wget from the host guest is refused",
              rc not in (0, None) and "refused" in out and token not in out, out[-500:])
        host_console.close()

        # Destroyed: the socket goes (a connection made before stays with the fallback until it ages out).
        held = IdleClient(cri)
        api.DestroyVm(pb.DestroyVmRequest(role=pb.ROLE_ISOLATED), timeout=60)
        check("DestroyVm removes the CRI socket", not os.path.exists(cri))

        api.StopVm(pb.StopVmRequest(role=pb.ROLE_HOST, force=True), timeout=60)
        t0 = time.monotonic()
        rc = d.stop()
        check(f"hydrad exits cleanly (no leak under ASan) with a CRI connection open, in {time.monotonic() - t0:.1f} s",
              rc == 0 and time.monotonic() - t0 < 4)  # not the API's grace period (5 s): nothing to wait for
        held.join(10)
        check("that connection was closed", held.closed_after is not None)
        ok = check.failed == 0
    finally:
        if check.failed or not ok:
            print("--- hydrad log (tail) ---")
            try:
                print(d.log()[-6000:])
            except OSError:
                pass
        d.cleanup()
    sys.exit(check.finish())


if __name__ == "__main__":
    main()
