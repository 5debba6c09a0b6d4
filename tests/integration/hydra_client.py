"""What the Python integration tests and benchmarks share: the grpcio stub for hydra.v1.Hydra, a private hydrad,
TAP-like checks, a WatchEvents collector, tests/httpd.py, waiting and /proc helpers. Import after putting
HYDRA_PYTHONPATH (the protoc --python_out tree) on sys.path."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

import grpc
from hydra.v1 import hydra_pb2 as pb
from hydra.v1 import hydra_pb2_grpc


def load_generated(path, name):
    """grpc/health/v1/health_pb2.py would shadow, or be shadowed by, the grpc package: load it by path."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


health_pb2 = load_generated(os.path.join(os.environ["HYDRA_PYTHONPATH"], "grpc/health/v1/health_pb2.py"),
                            "health_pb2")


class Hydra(hydra_pb2_grpc.HydraStub):
    """The stub grpc_tools generates from the proto (build/python/hydra/v1/hydra_pb2_grpc.py), plus health's
    Check (health_pb2_grpc would import grpc.health.v1, which the grpc package shadows)."""

    def __init__(self, channel):
        super().__init__(channel)
        self.Check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                         request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                         response_deserializer=health_pb2.HealthCheckResponse.FromString)


def connect(sock, timeout=30, options=()):
    """A channel to hydrad's socket once it is ready, and the stub on it."""
    channel = grpc.insecure_channel(f"unix:{sock}", options=list(options))
    grpc.channel_ready_future(channel).result(timeout=timeout)
    return channel, Hydra(channel)


class Checks:
    """`check(desc, cond, detail)` prints "ok - desc" or "not ok - desc" (and the detail under it); finish() prints
    "N passed, N failed" and returns the exit status."""

    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, desc, cond, detail=None):
        if cond:
            self.passed += 1
            print(f"ok - {desc}", flush=True)
        else:
            self.failed += 1
            print(f"not ok - {desc}" + (f"\n#   {detail}" if detail else ""), flush=True)
        return cond

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 else 1


def note(msg):
    print(f"# {msg}", flush=True)


def rpc_error(fn, *args, **kw):
    try:
        fn(*args, **kw)
    except grpc.RpcError as e:
        return e
    return None


def guest_spec(guest_dir, cmdline="console=ttyS0 panic=-1", **over):
    spec = pb.VmSpec(cpus=1, memory_mib=256, accel=pb.ACCEL_TCG,
                     kernel=pb.KernelBoot(kernel=f"{guest_dir}/vmlinuz", initrd=f"{guest_dir}/initrd.img",
                                          cmdline=cmdline))
    for k, v in over.items():
        getattr(spec, k).CopyFrom(v) if hasattr(v, "DESCRIPTOR") else setattr(spec, k, v)
    return spec


def wait_for(cond, timeout, interval=0.1):
    """Polls cond until it returns something true (returned) or timeout seconds have passed (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return cond()


def wait_booted(console, n=1, timeout=120):
    """Until the tiny guest has said it booted n times in console.log."""
    def booted():
        try:
            with open(console, errors="replace") as f:
                return f.read().count("hydra-guest: booted") >= n
        except FileNotFoundError:
            return False
    return bool(wait_for(booted, timeout, 0.2))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class EventCollector(threading.Thread):
    """Reads one WatchEvents stream (of role, or of both VMs) on a thread of its own, keeping every event and the
    time.time() it arrived. Starts at once and waits `settle` seconds, so that the stream is set up before the
    caller acts. Pass `stream` to read a stream opened earlier."""

    def __init__(self, api, role=pb.ROLE_UNSPECIFIED, settle=0.3, stream=None):
        super().__init__(daemon=True)
        self.stream = stream if stream is not None else api.WatchEvents(pb.WatchEventsRequest(role=role))
        self.events = []
        self.arrived = []
        self.ended = None          # the status code the stream ended with, once it has
        self.cond = threading.Condition()
        self.start()
        if settle:
            time.sleep(settle)

    def run(self):
        try:
            for ev in self.stream:
                t = time.time()
                with self.cond:
                    self.events.append(ev)
                    self.arrived.append(t)
                    self.cond.notify_all()
        except grpc.RpcError as e:
            with self.cond:
                self.ended = e.code()
                self.cond.notify_all()

    def __len__(self):
        with self.cond:
            return len(self.events)

    def find(self, pred, since=0, timed=False):
        """The events from index `since` on for which pred holds (as (arrival time, event) pairs if timed)."""
        with self.cond:
            return [(t, e) if timed else e for t, e in zip(self.arrived[since:], self.events[since:]) if pred(e)]

    def wait(self, pred, timeout, since=0, timed=False):
        """As find, once there is at least one (an empty list after timeout seconds)."""
        with self.cond:
            self.cond.wait_for(lambda: any(pred(e) for e in self.events[since:]), timeout)
        return self.find(pred, since, timed)

    def clear(self):
        """Forgets the events so far (indexes start again at 0)."""
        with self.cond:
            self.events.clear()
            self.arrived.clear()

    def close(self, timeout=10):
        self.stream.cancel()
        self.join(timeout)


class HttpServer:
    """tests/httpd.py serving root on 127.0.0.1 (port 0: any free one); its request log in TMP/NAME.log (log=False:
    none)."""

    HTTPD = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "httpd.py")

    def __init__(self, tmp, name, root, *extra, port=0, log=True):
        self.port_file = f"{tmp}/{name}.port"
        self.log = f"{tmp}/{name}.log" if log else "/dev/null"
        if os.path.exists(self.port_file):
            os.unlink(self.port_file)
        self.proc = subprocess.Popen(["/usr/bin/python3", self.HTTPD, "--root", root, "--port", str(port),
                                      "--port-file", self.port_file, "--log", self.log, *extra])

        def port():
            try:
                with open(self.port_file) as f:
                    return f.read().strip()
            except FileNotFoundError:
                return None
        written = wait_for(port, 30, 0.05)
        if not written:
            self.stop()
            raise RuntimeError("httpd did not start")
        self.port = int(written)
        self.url = f"http://127.0.0.1:{self.port}"

    def requests(self, path=None):
        """The requests it logged (dicts with "path", ...), all or those for path."""
        if not os.path.exists(self.log) or self.log == "/dev/null":
            return []
        with open(self.log) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return [r for r in lines if path is None or r["path"] == path]

    def paths(self):
        return [r["path"] for r in self.requests()]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def pids_under(directory):
    """The processes that run in a directory under directory (hydrad starts QEMU in its VM's state directory) or
    name a path under it in their arguments (helpers, servers, QEMU's disks)."""
    pids = set()
    for p in os.listdir("/proc"):
        if not p.isdigit() or int(p) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{p}/cwd")
            with open(f"/proc/{p}/cmdline", "rb") as f:
                args = f.read()
        except OSError:
            continue
        if cwd.startswith(directory + "/") or (directory + "/").encode() in args:
            pids.add(int(p))
    return pids


def kill_under(directory):
    for pid in pids_under(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class Daemon:
    """A private hydrad in a temporary directory; restartable on the same state and run dirs."""

    def __init__(self, hydrad, prefix="hydra-py.", extra_args=()):
        self.hydrad = hydrad
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        self.state = f"{self.tmp}/state"
        self.run = f"{self.tmp}/run"
        self.sock = f"{self.run}/hydra.sock"
        self.extra_args = list(extra_args)
        self.log_path = f"{self.tmp}/hydrad.log"
        self.proc = None
        self.channel = None
        self.api = None

    def start(self, timeout=60):
        cmd = [self.hydrad, "--state-dir", self.state, "--run-dir", self.run, "--log-level", "debug"] + self.extra_args
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.channel = grpc.insecure_channel(f"unix:{self.sock}")
        grpc.channel_ready_future(self.channel).result(timeout=timeout)
        self.api = Hydra(self.channel)
        return self.api

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.channel.close()

    def stop(self, timeout=90):
        """SIGTERM; returns hydrad's exit status (non-zero under ASan for a leak)."""
        if self.channel:
            self.channel.close()
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return -9

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def cleanup(self, keep=False):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        # No QEMU of ours may outlive the test.
        kill_under(self.tmp)
        if not keep and not os.environ.get("HYDRA_KEEP_TEST_DIR"):
            shutil.rmtree(self.tmp, ignore_errors=True)


class ConsoleClient:
    """A person at console.sock."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(0.2)
        self.data = b""

    def send(self, text):
        self.sock.sendall(text.encode())

    def read_until(self, needle, timeout):
        deadline = time.time() + timeout
        while needle.encode() not in self.data and time.time() < deadline:
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.data += chunk
            except socket.timeout:
                pass
        return needle.encode() in self.data

    def shell_prompt(self, timeout):
        """Presses Enter until the guest's shell prompts (it starts after the boot messages)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.data = b""
            self.send("\n")
            if self.read_until("/ # ", 2):
                return True
        return False

    def close(self):
        self.sock.close()
