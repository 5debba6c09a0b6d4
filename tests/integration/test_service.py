#!/usr/bin/python3
"""hydrad as a systemd service, on a machine where systemd is not PID 1 (issue 13). What systemd would do is done
here by hand, with the same protocol: the API socket bound by the test and passed as fd 3 ($LISTEN_FDS,
$LISTEN_PID), a datagram socket as $NOTIFY_SOCKET, $WATCHDOG_USEC.

 1. Socket activation: hydrad serves the socket it was passed (says so), READY=1 once it serves, STATUS= with both
    VMs' states, redone as the tiny guest is registered, started and stopped; WATCHDOG=1 at half the interval,
    from sd-event; STOPPING=1 at SIGTERM. The socket file is systemd's: still there, the same inode, after hydrad
    exits; a client that connected while no hydrad ran is served by the next one (the backlog is kept).
 2. QEMU as hydrad starts it: -sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny in
    its command line and a seccomp filter in force (/proc/PID/status), and nothing of hydrad's environment (a
    secret exported to hydrad, $NOTIFY_SOCKET, $LISTEN_*) in /proc/PID/environ.
 3. A socket hydrad cannot serve (a datagram socket, two sockets): exit 1 with an error naming what was passed and
    what hydrad.socket must say, and nothing done (no state or run directory made).
 4. Authorization per call (as root, setpriv drops to nobody): with socket_mode = 0666, socket_group and
    readonly_group set (two groups every Debian has, users and staff), nobody without either group is refused
    every call, PERMISSION_DENIED naming the group (hydractl and the Python grpcio client); with the socket group
    all calls pass; with the read-only group reads pass and StartVm is refused naming the group. The console
    socket follows the same rule through its mode and group (QMP is hydrad's alone). With the default mode (0660),
    nobody outside the group cannot connect, and hydractl says which group opens the socket.

Prints "N passed, N failed"."""
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402
from hydra_client import Checks, Hydra, guest_spec, kill_under, note, wait_for  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
HYDRACTL = os.environ["HYDRACTL"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
ISO = pb.ROLE_ISOLATED
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

check = Checks()

# Runs argv[2:] with the fds named in argv[1] at 3, 4, ... and $LISTEN_FDS/$LISTEN_PID saying so, as systemd does.
ACTIVATOR = r"""
import fcntl, os, sys
fds = [int(x) for x in sys.argv[1].split(",")]
moved = [fcntl.fcntl(f, fcntl.F_DUPFD, 3 + len(fds)) for f in fds]  # out of the way of 3, 4, ... first
for i, f in enumerate(moved):
    os.dup2(f, 3 + i)  # inheritable
for f in set(fds + moved):
    if f >= 3 + len(fds):
        os.close(f)
env = dict(os.environ, LISTEN_FDS=str(len(fds)), LISTEN_PID=str(os.getpid()))
os.execve(sys.argv[2], sys.argv[2:], env)
"""


class Notify(threading.Thread):
    """$NOTIFY_SOCKET: collects every datagram hydrad sends (each a newline-separated list of assignments)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.lines = []
        self.lock = threading.Lock()
        self.start()

    def run(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            with self.lock:
                self.lines.extend(data.decode(errors="replace").split("\n"))

    def all(self):
        with self.lock:
            return list(self.lines)

    def count(self, line):
        return sum(1 for x in self.all() if x == line)

    def statuses(self):
        return [x[len("STATUS="):] for x in self.all() if x.startswith("STATUS=")]

    def close(self):
        self.sock.close()


def listening_unix(path, type_=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_UNIX, type_)
    s.bind(path)
    os.chmod(path, 0o660)
    if type_ == socket.SOCK_STREAM:
        s.listen(16)
    return s


def activated(tmp, socks, env, args, log):
    fds = [s.fileno() for s in socks]
    cmd = ["/usr/bin/python3", "-c", ACTIVATOR, ",".join(map(str, fds)), HYDRAD,
           "--state-dir", f"{tmp}/state", "--run-dir", f"{tmp}/run", "--socket", f"{tmp}/run/hydra.sock"] + args
    return subprocess.Popen(cmd, pass_fds=fds, env=env, stdout=log, stderr=subprocess.STDOUT)


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def qemu_pid(api):
    return api.GetVm(pb.GetVmRequest(role=ISO), timeout=10).pid


def part_activation():
    tmp = tempfile.mkdtemp(prefix="hydra-service.")
    os.makedirs(f"{tmp}/run", mode=0o750)
    sock = listening_unix(f"{tmp}/run/hydra.sock")
    ino = os.stat(f"{tmp}/run/hydra.sock").st_ino
    notify = Notify(f"{tmp}/notify.sock")
    secret = "hydra-test-secret-7f3a9c"
    env = dict(os.environ, NOTIFY_SOCKET=f"{tmp}/notify.sock", WATCHDOG_USEC="400000",
               HYDRA_TEST_EXPORTED_TOKEN=secret)
    log = open(f"{tmp}/hydrad.log", "a")
    proc = activated(tmp, [sock], env, ["--log-level", "debug"], log)
    channel = grpc.insecure_channel(f"unix:{tmp}/run/hydra.sock")
    api = Hydra(channel)
    try:
        ready = wait_for(lambda: notify.count("READY=1") > 0, 30)
        check("activated: READY=1 once the API serves", ready, notify.all())
        check("activated: hydrad says it serves the socket systemd passed",
              b"(passed by systemd)" in read(f"{tmp}/hydrad.log"), read(f"{tmp}/hydrad.log")[-2000:])
        st = notify.statuses()
        check("STATUS= names both VMs: 'host: not registered; isolated: not registered'",
              st[:1] == ["host: not registered; isolated: not registered"], st)
        n0 = notify.count("WATCHDOG=1")
        time.sleep(1.2)
        n1 = notify.count("WATCHDOG=1")
        # WATCHDOG_USEC=400 ms: sd-event pings at about half of it, while the loop turns.
        check(f"WATCHDOG=1 from sd-event's own watchdog support ({n1 - n0} pings in 1.2 s, interval 400 ms)",
              n1 - n0 >= 3, notify.all()[-10:])

        ls = api.ListVms(pb.ListVmsRequest(), timeout=10)
        check("the API answers on the passed socket (no VM registered yet)", len(ls.vms) == 0, ls)
        api.RegisterVm(pb.RegisterVmRequest(role=ISO, spec=guest_spec(GUEST)), timeout=30)
        check("STATUS= after RegisterVm: 'isolated: defined'",
              wait_for(lambda: any("isolated: defined" in x for x in notify.statuses()), 10), notify.statuses())
        api.StartVm(pb.StartVmRequest(role=ISO), timeout=120)
        check("STATUS= after StartVm: 'isolated: running'",
              wait_for(lambda: any("isolated: running" in x for x in notify.statuses()), 30), notify.statuses())

        pid = qemu_pid(api)
        cmdline = read(f"/proc/{pid}/cmdline").split(b"\0")
        check("QEMU runs with -sandbox " + SANDBOX,
              b"-sandbox" in cmdline and cmdline[cmdline.index(b"-sandbox") + 1] == SANDBOX.encode(), cmdline)
        seccomp = [x for x in read(f"/proc/{pid}/status").decode().splitlines() if x.startswith("Seccomp:")]
        check("QEMU's seccomp filter is in force (Seccomp: 2)", seccomp == ["Seccomp:\t2"], seccomp)
        environ = read(f"/proc/{pid}/environ").split(b"\0")
        check("QEMU's environment is PATH and LC_ALL only: nothing of hydrad's (a secret, NOTIFY_SOCKET, LISTEN_*)",
              sorted(x.split(b"=")[0] for x in environ if x) == [b"LC_ALL", b"PATH"]
              and secret.encode() not in read(f"/proc/{pid}/environ"), environ)

        api.StopVm(pb.StopVmRequest(role=ISO, force=True), timeout=60)
        check("STATUS= after StopVm: 'isolated: stopped'",
              wait_for(lambda: any("isolated: stopped" in x for x in notify.statuses()), 30), notify.statuses())

        channel.close()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        check(f"SIGTERM: hydrad exits 0 (got {rc}) after STOPPING=1", rc == 0 and notify.count("STOPPING=1") == 1,
              notify.all()[-5:])
        try:
            left = os.stat(f"{tmp}/run/hydra.sock").st_ino
        except FileNotFoundError:
            left = None
        check("the socket file is systemd's: left in place, the same inode", left == ino, (left, ino))

        # A client that connects while no hydrad runs waits in the backlog, and the next hydrad serves it.
        result = {}

        def early_call():
            ch = grpc.insecure_channel(f"unix:{tmp}/run/hydra.sock")
            try:
                result["vms"] = len(Hydra(ch).ListVms(pb.ListVmsRequest(), timeout=60, wait_for_ready=True).vms)
            except grpc.RpcError as e:
                result["error"] = e
            ch.close()

        t = threading.Thread(target=early_call)
        t.start()
        time.sleep(1.5)
        proc = activated(tmp, [sock], env, [], log)
        t.join(90)
        check("a client that connected while hydrad was down is served by the next hydrad",
              result.get("vms") == 1, result)
        proc.send_signal(signal.SIGTERM)
        check("the second hydrad exits 0", proc.wait(timeout=60) == 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_under(tmp)
        notify.close()
        log.close()
        sock.close()
        if not os.environ.get("HYDRA_KEEP_TEST_DIR"):
            subprocess.run(["rm", "-rf", tmp], check=False)


def part_bad_sockets():
    cases = [
        ("a datagram socket", lambda t: [listening_unix(f"{t}/run/hydra.sock", socket.SOCK_DGRAM)],
         "the socket systemd passed is a datagram socket (unix); hydrad needs a listening unix stream socket "
         "(hydrad.socket: ListenStream="),
        ("two sockets", lambda t: [listening_unix(f"{t}/run/hydra.sock"), listening_unix(f"{t}/run/other.sock")],
         "systemd passed 2 sockets; hydrad takes one, the API socket (hydrad.socket must have exactly one "
         "ListenStream=, a path)"),
    ]
    for what, make, message in cases:
        tmp = tempfile.mkdtemp(prefix="hydra-service.")
        os.makedirs(f"{tmp}/run")
        socks = make(tmp)
        with open(f"{tmp}/hydrad.log", "a") as log:
            proc = activated(tmp, socks, dict(os.environ), [], log)
            try:
                rc = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = None
        out = read(f"{tmp}/hydrad.log").decode(errors="replace")
        check(f"{what} passed: exit 1 with an error naming it", rc == 1 and message in out, (rc, out))
        check(f"{what} passed: nothing done (no state directory, no lock in the run directory)",
              not os.path.exists(f"{tmp}/state") and not os.path.exists(f"{tmp}/run/hydrad.lock"),
              os.listdir(tmp) + os.listdir(f"{tmp}/run"))
        for s in socks:
            s.close()
        subprocess.run(["rm", "-rf", tmp], check=False)


def as_nobody(groups, argv, env=None):
    """argv run as nobody with exactly these supplementary groups (setpriv)."""
    g = ["--groups=" + ",".join(str(x) for x in groups)] if groups else ["--clear-groups"]
    nobody = pwd.getpwnam("nobody")
    return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}"] + g + argv,
                          capture_output=True, text=True, timeout=60, env=env)


PY_CALL = r"""
import sys
sys.path.insert(0, sys.argv[1])
import grpc
from hydra.v1 import hydra_pb2 as pb
from hydra_client import Hydra
api = Hydra(grpc.insecure_channel("unix:" + sys.argv[2]))
try:
    api.ListVms(pb.ListVmsRequest(), timeout=20)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"""


def part_authz():
    if os.geteuid() != 0:
        note("authorization: needs root (setpriv to nobody), not run")
        return
    full, read_ = grp.getgrnam("users").gr_gid, grp.getgrnam("staff").gr_gid
    tmp = tempfile.mkdtemp(prefix="hydra-service.")
    os.chmod(tmp, 0o755)
    os.makedirs(f"{tmp}/run", mode=0o755)
    with open(f"{tmp}/hydrad.conf", "w") as f:
        f.write("[hydrad]\nsocket_group = users\nreadonly_group = staff\nsocket_mode = 0666\n")
    sockp = f"{tmp}/run/hydra.sock"
    # nobody runs copies: the checkout may sit under a directory closed to it (CI clones into a 0700 mktemp -d).
    shutil.copy(HYDRACTL, f"{tmp}/hydractl")
    shutil.copytree(os.environ["HYDRA_PYTHONPATH"], f"{tmp}/python")
    shutil.copy(os.path.join(os.path.dirname(os.path.abspath(__file__)), "hydra_client.py"), f"{tmp}/python/")
    subprocess.run(["chmod", "-R", "a+rX", tmp], check=True)
    log = open(f"{tmp}/hydrad.log", "a")
    proc = subprocess.Popen([HYDRAD, "-c", f"{tmp}/hydrad.conf", "--state-dir", f"{tmp}/state", "--run-dir",
                             f"{tmp}/run"], stdout=log, stderr=subprocess.STDOUT)
    ctl = [f"{tmp}/hydractl", "--socket", sockp]
    try:
        wait_for(lambda: os.path.exists(sockp), 30)
        mode = stat.S_IMODE(os.stat(sockp).st_mode)
        check(f"socket_mode = 0666: the socket is {mode:04o}, group users",
              mode == 0o666 and os.stat(sockp).st_gid == full)

        r = as_nobody([], ctl + ["status"])
        check("nobody, in neither group: ListVms is PERMISSION_DENIED naming both groups",
              r.returncode != 0 and "PERMISSION_DENIED: permission denied: ListVms needs root or membership of "
              "group 'users' or 'staff' (you are uid 65534)" in r.stderr, r.stderr)
        r = as_nobody([], ctl + ["start", "isolated"])
        check("nobody, in neither group: StartVm is PERMISSION_DENIED naming the group",
              r.returncode != 0 and "StartVm changes VMs and needs root or membership of group 'users' "
              "(you are uid 65534)" in r.stderr, r.stderr)
        r = as_nobody([], ["/usr/bin/python3", "-c", PY_CALL, f"{tmp}/python", sockp],
                      env=dict(os.environ, HYDRA_PYTHONPATH=f"{tmp}/python"))
        check("nobody through the Python grpcio client: PERMISSION_DENIED naming the groups",
              r.stdout.startswith("PERMISSION_DENIED permission denied: ListVms needs root or membership of group "
                                  "'users' or 'staff'"), (r.stdout, r.stderr))
        check("hydrad logs the refusal with the caller's pid",
              wait_for(lambda: b"permission denied: ListVms" in read(f"{tmp}/hydrad.log"), 5),
              read(f"{tmp}/hydrad.log")[-1500:])

        r = as_nobody([full], ctl + ["status"])
        check("nobody in group users: ListVms passes", r.returncode == 0 and "no VMs registered" in r.stdout,
              (r.stdout, r.stderr))
        r = as_nobody([full], ctl + ["start", "isolated"])
        check("nobody in group users: StartVm passes authorization (NOT_FOUND: not registered)",
              "NOT_FOUND" in r.stderr and "PERMISSION_DENIED" not in r.stderr, r.stderr)

        r = as_nobody([read_], ctl + ["status"])
        check("nobody in group staff (read-only): ListVms passes", r.returncode == 0, (r.stdout, r.stderr))
        r = as_nobody([read_], ctl + ["stop", "isolated"])
        check("nobody in group staff (read-only): StopVm is PERMISSION_DENIED naming group users",
              "StopVm changes VMs and needs root or membership of group 'users' (you are uid 65534, with "
              "read-only access through group 'staff')" in r.stderr, r.stderr)

        r = subprocess.run(ctl + ["start", "isolated"], capture_output=True, text=True, timeout=60)
        check("root: StartVm passes authorization", "NOT_FOUND" in r.stderr, r.stderr)

        # The console socket: the same rule through its mode and group (0660 root:users in a 0710 root:users
        # directory: the group reaches it by name, nobody else reaches anything).
        with open(f"{tmp}/guest.ini", "w") as f:
            f.write(f"[vm]\ncpus = 1\nmemory = 256M\naccel = tcg\n[kernel]\npath = {GUEST}/vmlinuz\n"
                    f"initrd = {GUEST}/initrd.img\ncmdline = console=ttyS0 panic=-1\n")
        r = as_nobody([full], ctl + ["register", "isolated", "--spec", f"{tmp}/guest.ini"])
        check("nobody in group users: RegisterVm passes", r.returncode == 0, r.stderr)
        r = as_nobody([full], ctl + ["start", "isolated"])
        check("nobody in group users: StartVm starts the VM", r.returncode == 0, r.stderr)
        vmdir = f"{tmp}/run/isolated"
        st = os.stat(vmdir)
        check(f"the VM's run directory is 0710 root:users (got {stat.S_IMODE(st.st_mode):04o}, gid {st.st_gid})",
              stat.S_IMODE(st.st_mode) == 0o710 and st.st_gid == full)
        connect = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1])\n"
                   "    print('connected')\nexcept OSError as e:\n    print(e.strerror)\n")
        r = as_nobody([full], ["/usr/bin/python3", "-c", connect, f"{vmdir}/console.sock"])
        check("nobody in group users reaches the console socket", r.stdout.strip() == "connected", r)
        r = as_nobody([read_], ["/usr/bin/python3", "-c", connect, f"{vmdir}/console.sock"])
        check("nobody in the read-only group does not (console input changes the VM)",
              r.stdout.strip() == "Permission denied", r)
        r = as_nobody([full], ["/usr/bin/python3", "-c", connect, f"{vmdir}/qmp.sock"])
        check("QMP is hydrad's alone (0600): not even group users reaches it", r.stdout.strip() == "Permission denied",
              r)
        r = as_nobody([full], ctl + ["stop", "--force", "isolated"])
        check("nobody in group users: StopVm passes", r.returncode == 0, r.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        check(f"hydrad exits 0 (got {rc})", rc == 0)

    # The default mode: the socket is the first gate.
    with open(f"{tmp}/hydrad.conf", "w") as f:
        f.write("[hydrad]\nsocket_group = users\n")
    proc = subprocess.Popen([HYDRAD, "-c", f"{tmp}/hydrad.conf", "--state-dir", f"{tmp}/state", "--run-dir",
                             f"{tmp}/run"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(sockp), 30)
        time.sleep(0.3)
        r = as_nobody([], ctl + ["status"])
        check("default socket mode 0660: nobody outside group users cannot connect, and hydractl names the group",
              r.returncode != 0 and "cannot reach hydrad at " + sockp + ": permission denied (the socket is mode "
              "0660, group 'users': use the API as root or as a member of group 'users')" in r.stderr, r.stderr)
        r = as_nobody([full], ctl + ["status"])
        check("default socket mode 0660: a member of group users connects", r.returncode == 0, r.stderr)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
        subprocess.run(["rm", "-rf", tmp], check=False)


# Inside a private mount namespace: a tmpfs over /run/systemd and a datagram socket at the journal's native socket
# (/run/systemd/journal/socket, where sd_journal_send() writes), hydrad's stderr a file named by $JOURNAL_STREAM.
# Registers and starts the tiny guest, stops it, prints each journal entry as a JSON object per line.
JOURNAL_HARNESS = r"""
import json, os, signal, socket, subprocess, sys, threading, time
sys.path.insert(0, sys.argv[1])
import grpc
from hydra.v1 import hydra_pb2 as pb
from hydra_client import Hydra, guest_spec, wait_for
hydrad, guest, tmp = sys.argv[2:5]
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
os.makedirs("/run/systemd/journal")
j = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
j.bind("/run/systemd/journal/socket")
j.settimeout(0.5)
err = open(f"{tmp}/stderr", "w")
st = os.fstat(err.fileno())
env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
proc = subprocess.Popen([hydrad, "--state-dir", f"{tmp}/state", "--run-dir", f"{tmp}/run"], env=env,
                        stdout=err, stderr=err)
entries = []

done = threading.Event()

def drain():  # all along, as journald does: a full socket buffer would block hydrad's sendmsg
    while True:
        try:
            data = j.recv(65536)
        except socket.timeout:
            if done.is_set():
                return
            continue
        e, i = {}, 0
        while i < len(data):
            nl = data.index(b"\n", i)
            line = data[i:nl]
            if b"=" in line:
                k, v = line.split(b"=", 1)
                i = nl + 1
            else:  # KEY\n, a little-endian 64-bit length, the value, \n
                k = line
                n = int.from_bytes(data[nl + 1:nl + 9], "little")
                v = data[nl + 9:nl + 9 + n]
                i = nl + 9 + n + 1
            e[k.decode()] = v.decode(errors="replace")
        entries.append(e)

reader = threading.Thread(target=drain)
reader.start()
try:
    ch = grpc.insecure_channel(f"unix:{tmp}/run/hydra.sock")
    grpc.channel_ready_future(ch).result(timeout=30)
    api = Hydra(ch)
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_ISOLATED, spec=guest_spec(guest)), timeout=30)
    api.StartVm(pb.StartVmRequest(role=pb.ROLE_ISOLATED), timeout=120)
    api.StopVm(pb.StopVmRequest(role=pb.ROLE_ISOLATED, force=True), timeout=60)
    # A launch that fails (a kernel QEMU cannot load) is logged as an error.
    open(f"{tmp}/empty-kernel", "w").close()
    spec = guest_spec(guest)
    spec.kernel.kernel = f"{tmp}/empty-kernel"
    api.RegisterVm(pb.RegisterVmRequest(role=pb.ROLE_HOST, spec=spec), timeout=30)
    try:
        api.StartVm(pb.StartVmRequest(role=pb.ROLE_HOST), timeout=60)
    except grpc.RpcError:
        pass
    ch.close()
finally:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    done.set()
    reader.join()
for e in entries:
    print(json.dumps(e))
print(json.dumps({"exit": rc}))
"""


def part_journal():
    if os.geteuid() != 0 or not os.path.isdir("/run/systemd") or not shutil.which("unshare"):
        note("journal: needs root, /run/systemd and unshare (a private mount namespace), not run")
        return
    tmp = tempfile.mkdtemp(prefix="hydra-service.")
    try:
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "/usr/bin/python3", "-c",
                            JOURNAL_HARNESS, os.environ["HYDRA_PYTHONPATH"] + "/", HYDRAD, GUEST, tmp],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__))))
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
        entries = [e for e in lines if "MESSAGE" in e]
        check("journal: hydrad sends its lines to the journal when $JOURNAL_STREAM names its stderr",
              any("hydrad ready" in e["MESSAGE"] for e in entries) and lines and lines[-1].get("exit") == 0,
              (r.returncode, r.stderr[-2000:], lines[-3:]))
        stderr = read(f"{tmp}/stderr").decode(errors="replace")
        check("journal: nothing of it on stderr", "hydrad ready" not in stderr, stderr[-1000:])
        states = [(e.get("VM"), e.get("HYDRA_STATE"), e.get("PRIORITY")) for e in entries if "HYDRA_STATE" in e]
        check("journal: each state change carries VM=isolated, HYDRA_STATE= and PRIORITY=6",
              ("isolated", "starting", "6") in states and ("isolated", "running", "6") in states
              and ("isolated", "stopped", "6") in states, states)
        check("journal: a line about no VM carries no VM= field",
              any("hydrad ready" in e["MESSAGE"] and "VM" not in e and e.get("PRIORITY") == "6" for e in entries))
        errors = [e for e in entries if e.get("PRIORITY") == "3" and e.get("VM") == "host"]
        check("journal: the failed launch is an error: PRIORITY=3, VM=host", errors,
              [e for e in entries if e.get("VM") == "host"])
        check("journal: CODE_FILE= and CODE_LINE= are the caller's, not log.c's",
              entries and all(not e.get("CODE_FILE", "").endswith("log.c") for e in entries)
              and any(e.get("CODE_FILE", "").endswith("vm.c") for e in entries), entries[:3])
    finally:
        kill_under(tmp)
        if not os.environ.get("HYDRA_KEEP_TEST_DIR"):
            subprocess.run(["rm", "-rf", tmp], check=False)


def main():
    part_activation()
    part_journal()
    part_bad_sockets()
    part_authz()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
