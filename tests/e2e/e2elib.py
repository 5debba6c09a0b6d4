"""What the e2e tests share: the built artifacts (Debian image, local package source, OCI archive), the HTTP server
a guest reaches as 10.0.2.2, a private hydrad, hydractl, ssh into the guest, and milestone timing.

Everything is offline: the image and the .debs come from Debian's mirror at build time (build-image,
build-apt-repo), the container image from busybox-static (build-oci); csi-grpc-proxy is a stand-in
(csi-grpc-proxy-standin) because the real one is a download from the internet."""
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
from hydra_client import Checks, Daemon, HttpServer, free_port, note, wait_for  # noqa: E402,F401

# The local package source's port is fixed: the image's sources.list names it, and that line is part of the image's
# cache key (build-image --apt-source). A guest reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU user networking).
REPO_PORT = 18480
PAUSE_PATH = "oci/hydra-e2e-pause.oci.tar"  # in the web root
APT_SOURCE = f"deb [trusted=yes] http://10.0.2.2:{REPO_PORT}/ ./"
IMAGE_NAME = "debian-12-hydra-e2e-amd64.qcow2.xz"
CACHE_DIR = os.environ.get("HYDRA_E2E_CACHE", "/var/cache/hydra-e2e")

USER = "hydra"
PASSWORD = "e2e-Pa55word"  # a test password: the guests are throw-away and reachable only on 127.0.0.1
READY_TIMEOUT = int(os.environ.get("HYDRA_E2E_READY_TIMEOUT", "1500"))  # seconds; TCG on 2 busy cores is slow

HYDRAD = os.environ.get("HYDRAD", "build/hydrad")
HYDRACTL = os.environ.get("HYDRACTL", "build/hydractl")


def script_env(hostname, ssh_port, key, cpus, **extra):
    """start-vm.sh's variables for a test VM (the local server's image, its checksum, the proxy stand-in, a user
    with a password and the test's key, TCG, 2 GiB), nothing from the caller's environment; extra adds or
    overrides."""
    env = {
        "HOME": os.environ.get("HOME", "/root"),
        "DEFAULT_IMAGE": IMAGE_NAME,
        "DEFAULT_IMAGE_SOURCE_URL": f"http://127.0.0.1:{REPO_PORT}/images",
        "HYDRA_IMAGE_SUMS_URL": f"http://127.0.0.1:{REPO_PORT}/images/SHA512SUMS",
        "DEFAULT_CSI_GRPC_PROXY_URL": f"http://10.0.2.2:{REPO_PORT}/csi-grpc-proxy-",
        "VM_USERNAME": USER,
        "VM_PASSWORD": PASSWORD,
        "VM_HOSTNAME": hostname,
        "VM_SSH_AUTHORIZED_KEY": key,
        "KVM_CPU": str(cpus),
        "KVM_MEMORY": "2",
        "HYDRA_ACCEL": "tcg",
        "DEFAULT_KVM_HOST_SSHD_PORT": str(ssh_port),
    }
    env.update(extra)
    return env


def get_vm(api, role):
    """GetVm of role ("host" or "isolated")."""
    from hydra.v1 import hydra_pb2 as pb
    return api.GetVm(pb.GetVmRequest(role=pb.ROLE_HOST if role == "host" else pb.ROLE_ISOLATED), timeout=30)


def last_line(cmd):
    """Runs a build script (its progress goes to our stderr) and returns the last line of its stdout."""
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


class Artifacts:
    """build-image, build-apt-repo and build-oci (each cached: a rerun with the same package versions builds
    nothing), and a web root under the cache (hard links, so the server's realpath check keeps it inside):
    /Packages, /Release, /pool/ (the package source), /images/ (image + SHA512SUMS), /csi-grpc-proxy-amd64,
    /oci/hydra-e2e-pause.oci.tar (the sandbox image the seed imports)."""

    def __init__(self):
        self.image_dir = last_line([f"{HERE}/build-image", "--apt-source", APT_SOURCE, CACHE_DIR])
        self.repo_dir = last_line([f"{HERE}/build-apt-repo", self.image_dir, CACHE_DIR])
        self.oci_archive = last_line([f"{HERE}/build-oci", f"{CACHE_DIR}/oci"])
        with open(os.path.join(os.path.dirname(self.oci_archive), "ref")) as f:
            self.oci_ref = f.read().strip()
        oci_dir = os.path.dirname(self.oci_archive)
        with open(os.path.join(oci_dir, "pause-ref")) as f:
            self.pause_ref = f.read().strip()  # a stand-in for the CRI plugin's sandbox image
        self.pause_archive = os.path.join(oci_dir, "hydra-e2e-pause.oci.tar")
        with open(os.path.join(self.image_dir, "SHA512SUMS")) as f:
            self.sha512 = f.read().split()[0]
        self.www = tempfile.mkdtemp(prefix="www.", dir=CACHE_DIR)
        self._link(self.repo_dir, "")
        self._link(self.image_dir, "images", only=(IMAGE_NAME, "SHA512SUMS"))
        self._link_file(f"{HERE}/csi-grpc-proxy-standin", "csi-grpc-proxy-amd64")
        self._link_file(self.pause_archive, PAUSE_PATH)

    def sandbox_env(self):
        """hydrad's variables for the isolated preset's containerd: the pause stand-in as its sandbox image, named
        in its config and imported by the seed from the web root (the guest cannot pull one)."""
        return {"HYDRA_SANDBOX_IMAGE": self.pause_ref,
                "HYDRA_SANDBOX_IMAGE_URL": f"http://10.0.2.2:{REPO_PORT}/{PAUSE_PATH}"}

    def _link_file(self, src, rel):
        dst = os.path.join(self.www, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            subprocess.run(["cp", "--reflink=auto", src, dst], check=True)

    def _link(self, src_dir, rel, only=None):
        for root, _, files in os.walk(src_dir):
            for name in files:
                if only and name not in only:
                    continue
                src = os.path.join(root, name)
                self._link_file(src, os.path.join(rel, os.path.relpath(src, src_dir)))

    def cleanup(self):
        subprocess.run(["rm", "-rf", self.www], check=False)


class Clock:
    """Milestones printed with their time from t0 (StartVm)."""

    def __init__(self, what):
        self.what = what
        self.t0 = time.monotonic()
        self.marks = {}

    def mark(self, name):
        t = time.monotonic() - self.t0
        self.marks[name] = t
        note(f"{self.what}: {name} at {t:.1f} s after StartVm")
        return t


def hydractl(sock, *args, env=None, timeout=1800, check=False):
    """hydractl ARGS against sock; returns the CompletedProcess (stdout and stderr text)."""
    full_env = dict(os.environ, HYDRA_SOCKET=sock)
    if env is not None:
        full_env = dict(env, HYDRA_SOCKET=sock, PATH=os.environ.get("PATH", "/usr/bin:/bin"))
    p = subprocess.run([HYDRACTL, *args], env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"hydractl {' '.join(args)}: exit {p.returncode}: {p.stderr.strip()}")
    return p


class Guest:
    """ssh into a guest through hydrad's forward of guest port 22 on 127.0.0.1."""

    def __init__(self, tmp, user, port):
        self.user = user
        self.port = port
        self.key = os.path.join(tmp, "id_ed25519")
        if not os.path.exists(self.key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hydra-e2e", "-f", self.key],
                           check=True)
        with open(self.key + ".pub") as f:
            self.public_key = f.read().strip()

    def ssh(self, command, input=None, timeout=120):
        """Runs command (a shell string) in the guest; CompletedProcess with text output."""
        cmd = ["ssh", "-i", self.key, "-p", str(self.port), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
               f"{self.user}@127.0.0.1", command]
        try:
            return subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return subprocess.CompletedProcess(cmd, 124, e.stdout or "", f"timed out after {timeout} s")

    def wait_ssh(self, timeout):
        return wait_for(lambda: self.ssh("true", timeout=20).returncode == 0, timeout, 2)

    def su_accepts(self, password):
        """`su USER` in the guest (PAM) with password typed on a pty; True when it let us in. The password goes
        through ssh's stdin, never an argv."""
        script = ("import os, pty, sys, time\n"
                  "pw = sys.stdin.readline().rstrip('\\n')\n"
                  f"pid, fd = pty.fork()\n"
                  f"if pid == 0:\n"
                  f"    os.execvp('su', ['su', {self.user!r}, '-c', 'echo HYDRA-SU-OK'])\n"
                  "buf = b''\n"
                  "deadline = time.time() + 30\n"
                  "while b'assword' not in buf and time.time() < deadline:\n"
                  "    buf += os.read(fd, 1024)\n"
                  "os.write(fd, (pw + '\\n').encode())\n"
                  "out = b''\n"
                  "while True:\n"
                  "    try:\n"
                  "        chunk = os.read(fd, 1024)\n"
                  "    except OSError:\n"
                  "        break\n"
                  "    if not chunk:\n"
                  "        break\n"
                  "    out += chunk\n"
                  "_, status = os.waitpid(pid, 0)\n"
                  "print('HYDRA-SU-STATUS', os.waitstatus_to_exitcode(status), b'HYDRA-SU-OK' in out)\n")
        p = self.ssh(f"python3 -c {shlex.quote(script)}", input=password + "\n", timeout=60)
        return "HYDRA-SU-STATUS 0 True" in p.stdout, (p.stdout + p.stderr).strip()[-300:]


def stop_vm(check, api, sock, role, what):
    """hydractl stop ROLE, checked to be an ACPI power-off (state stopped, reason guest-shutdown); prints the time
    it took. Returns the check's result."""
    from hydra.v1 import hydra_pb2 as pb
    t = time.monotonic()
    p = hydractl(sock, "stop", role, timeout=300)
    vm = get_vm(api, role)
    note(f"{what}: {time.monotonic() - t:.1f} s ({vm.last_exit.reason})")
    return check(f"{what}: hydractl stop {role} powers the guest off through ACPI (reason guest-shutdown)",
                 p.returncode == 0 and vm.state == pb.VM_STATE_STOPPED and vm.last_exit.reason == "guest-shutdown",
                 f"exit {p.returncode}: {p.stderr.strip()}; state {pb.VmState.Name(vm.state)}, "
                 f"reason {vm.last_exit.reason}")


def teardown(check, ok, d, http, art, tmp, roles):
    """The end of a test, whatever happened: when it failed (ok false), hydrad's log tail and each VM's console
    tail; then hydrad is stopped (and must exit cleanly), the server stopped, and the temporary files removed
    (the test's directory kept with HYDRA_KEEP_TEST_DIR)."""
    if not ok:
        note("hydrad's log tail:\n" + "\n".join(d.log().splitlines()[-40:]))
        for role in roles:
            console = f"{d.state}/{role}/console.log"
            if os.path.exists(console):
                with open(console, errors="replace") as f:
                    note(f"{role} console tail:\n" + "".join(f.readlines()[-60:]))
    rc = d.stop()
    check("hydrad exits cleanly", rc == 0, f"exit {rc}")
    http.stop()
    d.cleanup()
    art.cleanup()
    if not os.environ.get("HYDRA_KEEP_TEST_DIR"):
        shutil.rmtree(tmp, ignore_errors=True)  # the server's log, the test's ssh key
