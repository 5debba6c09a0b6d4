"""What the Python integration tests and benchmarks share: the grpcio stub for hydra.v1.Hydra, a private hydrad,
TAP-like checks. Import after putting HYDRA_PYTHONPATH (the protoc --python_out tree) on sys.path."""
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
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


class Checks:
    def __init__(self):
        self.passed = self.failed = 0

    def __call__(self, desc, cond):
        if cond:
            self.passed += 1
            print(f"ok - {desc}", flush=True)
        else:
            self.failed += 1
            print(f"not ok - {desc}", flush=True)
        return cond

    def finish(self):
        print(f"{self.passed} passed, {self.failed} failed")
        return 0 if self.failed == 0 else 1


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
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    return cond()


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
        subprocess.run(["pkill", "-KILL", "-f", "--", f"{self.tmp}/"], check=False)
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
