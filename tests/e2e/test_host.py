#!/usr/bin/python3
"""The host VM and the pair (issue 11, item 4): `hydractl register host --from-env --preset host` (ENABLE_K3S_DIOD)
on the e2e Debian image boots with hydrad's seed and runs diod on the configured port; the isolated VM, started
after it with the isolated preset's EXTERNAL_9P_KUBELET_MOUNTS, mounts /var/lib/kubelet and /var/log/pods over
9p/TCP through diod (10.0.2.2:30564, hydrad's forward into the host VM), and a file written in the host VM's
/var/lib/kubelet is read back in the isolated VM.

Offline, the seed's k3s install step (`wget -O - https://get.k3s.io | sh -`) fails as it must: wget cannot
resolve the name and `sh` gets an empty script, so cloud-init still says done; the test shows wget's error and
that k3s is absent. A connected device gets k3s there (tests/e2e/README.md).

The add-crismux module (issue 12): the host VM has the crismux installer and the RuntimeClass nelly, and the
installer changed nothing without k3s; the kubelet's CRI calls for a nelly pod, sent by the test through hydrad's
CRI socket, run its container in the isolated VM, and its log is read in the host VM's /var/log/pods; with the
isolated VM stopped, the socket answers UNAVAILABLE at once."""
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])

from e2elib import (HYDRAD, READY_TIMEOUT, REPO_PORT, USER, Artifacts, Checks, Clock, Daemon, Guest,  # noqa: E402
                    HttpServer, free_port, get_vm, hydractl, note, script_env, stop_vm, teardown, wait_for)
import grpc  # noqa: E402

import cri  # noqa: E402

DIOD_PORT = 30564  # the script's fstab lines name this port (DEFAULT_KVM_HOST_DIOD_PORT's default)



def start(check, api, sock, role, guest, what):
    clock = Clock(what)
    p = hydractl(sock, "start", role, "--wait", "ready", "--timeout", str(READY_TIMEOUT), timeout=READY_TIMEOUT + 60)
    vm = get_vm(api, role)
    if not check(f"{what}: hydractl start {role} --wait ready", p.returncode == 0 and vm.ready,
                 f"exit {p.returncode}: {p.stderr.strip()}; ready_detail '{vm.ready_detail}', "
                 f"last_error '{vm.last_error}'"):
        return None
    clock.mark(f"ready ({vm.ready_detail})")
    if check(f"{what}: ssh", guest.wait_ssh(READY_TIMEOUT)):
        clock.mark("ssh")
    guest.ssh("cloud-init status --wait >/dev/null", timeout=READY_TIMEOUT)
    clock.mark("cloud-init done")
    return clock


def kubelet_view(check, api, host, isolated, art):
    """What the kubelet in the host VM sends through crismux for a pod with runtimeClassName nelly, sent by the
    test through hydrad's CRI socket: the container runs in the isolated VM, and its log lands in the host VM's
    /var/log/pods (the isolated VM mounts it from the host VM's diod), where the kubelet reads it."""
    cri_sock = get_vm(api, "isolated").cri_socket
    p = subprocess.run(["ctr", "--address", cri_sock, "--namespace", "k8s.io", "images", "import", art.oci_archive],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=600)
    check("the busybox image imported into the isolated VM through the CRI socket", p.returncode == 0,
          p.stdout + p.stderr)

    def make_log_dir(pod_dir, container_dir):  # the kubelet's own file system: the host VM
        q = host.ssh(f"sudo mkdir -p {container_dir}")
        if q.returncode != 0:
            raise RuntimeError(f"mkdir {container_dir} in the host VM: {q.stderr}")

    def read_log(path):  # ... and the kubelet reads the log there
        return host.ssh(f"sudo cat {path}").stdout

    try:
        pod = cri.kubelet_pod(cri_sock, art.oci_ref, ["sh", "-c", "echo hello-from-nelly; hostname"],
                              runtime_handler="nelly", make_log_dir=make_log_dir, read_log=read_log)
    except Exception as e:  # noqa: BLE001 - the check says what failed
        check("a pod with runtime handler nelly: the kubelet's calls through hydrad's CRI socket", False, repr(e))
        return
    calls = pod["calls"]
    polls = [t for m, t in calls if m == "ContainerStatus"]
    for method, seconds in calls:
        if method != "ContainerStatus":
            note(f"kubelet view: {method} {seconds * 1000:.0f} ms")
    note(f"kubelet view: ContainerStatus x{len(polls)}, {max(polls) * 1000:.0f} ms at most")
    check("RunPodSandbox (nelly), CreateContainer, StartContainer, ContainerStatus until exited 0, "
          "StopPodSandbox, RemovePodSandbox",
          pod["exit_code"] == 0 and [m for m, _ in calls if m != "ContainerStatus"] ==
          ["RunPodSandbox", "CreateContainer", "StartContainer", "StopPodSandbox", "RemovePodSandbox"],
          f"exit {pod['exit_code']} ({pod['reason']}); calls {[m for m, _ in calls]}")
    log = pod["log"]
    note(f"the container's log, read in the host VM at {pod['log_path']}:\n{log.strip()}")
    check("its log is read back in the host VM's /var/log/pods (CRI log lines: stdout F hello-from-nelly)",
          pod["log_path"].startswith("/var/log/pods/") and " stdout F hello-from-nelly" in log, log)
    check("and it ran in the isolated VM: the container's host name is the isolated VM's",
          " stdout F hydra-e2e-isolated" in log and "hydra-e2e-host" not in log, log)


def nelly_while_stopped(check, cri_sock):
    """A nelly call while the isolated VM is stopped: hydrad's CRI socket answers UNAVAILABLE at once, with the
    reason (crismux passes it on to the kubelet)."""
    t = time.monotonic()
    try:
        cri.runtime_version(cri_sock, timeout=30)
        code, details = None, "answered"
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
    took = time.monotonic() - t
    note(f"a CRI call with the isolated VM stopped: {code} after {took * 1000:.0f} ms: {details}")
    check("a CRI call with the isolated VM stopped: UNAVAILABLE at once, saying the VM is stopped",
          code == grpc.StatusCode.UNAVAILABLE and "stopped" in details and took < 5, f"{code} {details} {took:.1f} s")


def main():
    check = Checks()
    art = Artifacts()
    tmp = tempfile.mkdtemp(prefix="hydra-e2e-host.")
    http = HttpServer(tmp, "httpd", art.www, port=REPO_PORT)
    d = Daemon(HYDRAD, prefix="hydra-e2e-host.")
    host = Guest(tmp, USER, free_port())
    isolated = Guest(tmp, USER, free_port())
    ok = False
    try:
        api = d.start()
        sock = d.sock
        env = script_env("hydra-e2e-host", host.port, host.public_key, 1, DEFAULT_KVM_PORTS_REDIRECT="")
        p = hydractl(sock, "register", "host", "--from-env", "--preset", "host", env=env)
        check("hydractl register host --from-env --preset host", p.returncode == 0, p.stderr)
        vm = get_vm(api, "host")
        check(f"the host VM forwards 127.0.0.1:{DIOD_PORT} to diod (guest port 564)",
              any(f.host_port == DIOD_PORT and f.guest_port == 564 for f in vm.spec.forwards),
              str(list(vm.spec.forwards)))
        if start(check, api, sock, "host", host, "host VM") is None:
            return 1
        running = wait_for(lambda: "564" in host.ssh("ss -Hltn 'sport = :564'").stdout, 300, 3)
        check("diod listens on port 564 in the host VM", running, host.ssh("systemctl status diod; ss -ltn").stdout)
        p = host.ssh("cloud-init status; sudo grep -h -A1 'get.k3s.io' /var/log/cloud-init-output.log | head -4; "
                     "command -v k3s || echo no-k3s")
        note(f"host VM cloud-init (the k3s step fails offline, as it must):\n{p.stdout.strip()}")
        check("offline, the k3s step fails (wget cannot reach get.k3s.io) and k3s is absent",
              "get.k3s.io" in p.stdout and "no-k3s" in p.stdout, p.stdout + p.stderr)
        # The add-crismux module in the seed: the installer at start-vm.sh's path, the RuntimeClass in k3s's
        # auto-deploy directory. Offline there is no k3s, so the installer refuses and changes nothing.
        p = host.ssh("ls -l /usr/bin/install_crismux.sh; "
                     "cat /var/lib/rancher/k3s/server/manifests/hydra-nelly-runtimeclass.yaml; "
                     "sudo grep -h 'install_crismux.sh: error:' /var/log/cloud-init-output.log; "
                     "sudo /usr/bin/install_crismux.sh status; echo status-exit=$?; "
                     "ls /etc/systemd/system/crismux.service /etc/systemd/system/containerd-k3s.service 2>&1")
        note(f"host VM, the add-crismux module:\n{p.stdout.strip()}")
        check("the host VM has the crismux installer (/usr/bin/install_crismux.sh, executable)",
              "-rwxr--r--" in p.stdout and "/usr/bin/install_crismux.sh" in p.stdout, p.stdout + p.stderr)
        check("and the RuntimeClass nelly (handler nelly) in k3s's auto-deploy directory",
              "kind: RuntimeClass" in p.stdout and "name: nelly" in p.stdout and "handler: nelly" in p.stdout,
              p.stdout)
        check("offline, without k3s, the installer refused at first boot (k3s is not installed) and installed "
              "nothing: status says absent (exit 3)",
              "install_crismux.sh: error: k3s is not installed" in p.stdout and "status-exit=3" in p.stdout and
              "cannot access '/etc/systemd/system/crismux.service'" in p.stdout, p.stdout + p.stderr)

        # k3s makes these directories on a connected device; offline the test does.
        p = host.ssh("sudo mkdir -p /var/lib/kubelet /var/log/pods && "
                     "echo hello-from-host-kubelet | sudo tee /var/lib/kubelet/hydra-e2e-file >/dev/null && "
                     "echo pod-log | sudo tee /var/log/pods/hydra-e2e-log >/dev/null")
        check("a file written in the host VM's /var/lib/kubelet", p.returncode == 0, p.stderr)

        # 1 vCPU each: two TCG guests on two cores.
        env = script_env("hydra-e2e-isolated", isolated.port, isolated.public_key, 1,
                         DEFAULT_KVM_HOST_CONTAINERD_PORT=str(free_port()), DEFAULT_KVM_PORTS_REDIRECT="",
                         **art.sandbox_env())
        p = hydractl(sock, "register", "isolated", "--from-env", "--preset", "isolated", env=env)
        check("hydractl register isolated --from-env --preset isolated (kubelet shares over TCP)",
              p.returncode == 0, p.stderr)
        if start(check, api, sock, "isolated", isolated, "isolated VM (after the host VM)") is None:
            return 1
        p = isolated.ssh("findmnt -n -o SOURCE,FSTYPE,OPTIONS /var/lib/kubelet; findmnt -n -o FSTYPE /var/log/pods; "
                         "cat /var/lib/kubelet/hydra-e2e-file /var/log/pods/hydra-e2e-log")
        note(f"isolated VM's shares:\n{p.stdout.strip()}")
        check("the isolated VM mounts /var/lib/kubelet and /var/log/pods over 9p/TCP",
              p.stdout.count("9p") >= 2 and "trans=tcp" in p.stdout, p.stdout + p.stderr)
        check("the file written in the host VM is read back in the isolated VM",
              "hello-from-host-kubelet" in p.stdout and "pod-log" in p.stdout, p.stdout + p.stderr)
        p = isolated.ssh("echo written-by-isolated | sudo tee /var/lib/kubelet/hydra-e2e-back >/dev/null")
        back = host.ssh("cat /var/lib/kubelet/hydra-e2e-back").stdout.strip()
        check("and a file written there by the isolated VM appears in the host VM", back == "written-by-isolated",
              back)

        kubelet_view(check, api, host, isolated, art)

        stop_vm(check, api, sock, "isolated", "stop isolated")
        nelly_while_stopped(check, get_vm(api, "isolated").cri_socket)
        stop_vm(check, api, sock, "host", "stop host")
        ok = True
    finally:
        teardown(check, ok, d, http, art, tmp, ("host", "isolated"))
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
