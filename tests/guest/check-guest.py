#!/usr/bin/env python3
"""check-guest.py GUESTDIR [--disk] [--timeout SEC] [--qemu PATH] [-- EXTRA QEMU ARGS...]

Smoke test of the tiny guest built by build-guest.sh, on bare QEMU under TCG (no hydrad):
boot until the console shows "hydra-guest: booted", send QMP system_powerdown, and require QEMU to
exit by itself (SHUTDOWN guest-shutdown) with "hydra-guest: powering off" on the console.
--disk also attaches a small qcow2 (made with qemu-img) as a virtio disk. Prints timings; exit 0 on
success, 1 on failure (with the console log tail). Python 3 standard library only.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def fail(msg, log=None):
    print(f"check-guest: FAIL: {msg}", file=sys.stderr)
    if log and os.path.exists(log):
        with open(log, errors="replace") as f:
            tail = f.read().splitlines()[-30:]
        print("---- console tail ----", file=sys.stderr)
        print("\n".join(tail), file=sys.stderr)
    sys.exit(1)


def read_log(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


class Qmp:
    def __init__(self, path, deadline):
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(10)
        self.file = self.sock.makefile("rw")
        self.events = []
        greeting = json.loads(self.file.readline())
        if "QMP" not in greeting:
            raise RuntimeError(f"bad QMP greeting: {greeting}")
        self.execute("qmp_capabilities")

    def execute(self, cmd, **args):
        msg = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self.file.write(json.dumps(msg) + "\n")
        self.file.flush()
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError(f"QMP closed while waiting for {cmd}")
            reply = json.loads(line)
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise RuntimeError(f"{cmd}: {reply['error']}")
            return reply.get("return")

    def drain(self):
        """Read events until QEMU closes the socket."""
        try:
            while True:
                line = self.file.readline()
                if not line:
                    return
                self.events.append(json.loads(line))
        except (OSError, ValueError):
            return


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("guestdir")
    ap.add_argument("--disk", action="store_true", help="attach a small qcow2 as a virtio disk")
    ap.add_argument("--timeout", type=float, default=180, help="boot timeout in seconds (TCG is slow)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("extra", nargs="*", help="extra QEMU arguments (after --)")
    a = ap.parse_args()

    kernel = os.path.join(a.guestdir, "vmlinuz")
    initrd = os.path.join(a.guestdir, "initrd.img")
    for p in (kernel, initrd):
        if not os.path.isfile(p):
            fail(f"{p} missing (run tests/guest/build-guest.sh {a.guestdir})")

    tmp = tempfile.mkdtemp(prefix="hydra-check-guest.")
    log = os.path.join(tmp, "console.log")
    qmp_path = os.path.join(tmp, "qmp.sock")
    argv = [a.qemu, "-accel", "tcg", "-machine", "q35", "-cpu", "qemu64", "-m", "256M",
            "-smp", "2", "-nodefaults", "-display", "none",
            "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1",
            "-chardev", f"file,id=con0,path={log}", "-serial", "chardev:con0",
            "-qmp", f"unix:{qmp_path},server=on,wait=off",
            "-device", "virtio-rng-pci",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
    if a.disk:
        disk = os.path.join(tmp, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
        argv += ["-drive", f"file={disk},if=virtio,format=qcow2"]
    argv += a.extra

    t0 = time.monotonic()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = t0 + a.timeout
        qmp = Qmp(qmp_path, deadline)
        t_qmp = time.monotonic()
        while "hydra-guest: booted" not in read_log(log):
            if qemu.poll() is not None:
                fail(f"QEMU exited early ({qemu.returncode}): {qemu.stderr.read().strip()}", log)
            if time.monotonic() > deadline:
                fail(f"no 'hydra-guest: booted' within {a.timeout:.0f} s", log)
            time.sleep(0.05)
        t_boot = time.monotonic()
        text = read_log(log)
        if "hydra-guest login:" not in text:
            fail("no login prompt line after the booted marker", log)
        if a.disk and "hydra-guest: disk vda" not in text:
            fail("virtio disk vda not seen by the guest", log)

        qmp.execute("system_powerdown")
        t_pd = time.monotonic()
        try:
            qemu.wait(timeout=30)
        except subprocess.TimeoutExpired:
            fail("QEMU still running 30 s after system_powerdown", log)
        t_exit = time.monotonic()
        qmp.drain()
        shutdown = [e for e in qmp.events if e.get("event") == "SHUTDOWN"]
        if not shutdown or shutdown[-1].get("data", {}).get("reason") != "guest-shutdown":
            fail(f"no SHUTDOWN guest-shutdown event (events: {qmp.events})", log)
        if "hydra-guest: powering off" not in read_log(log):
            fail("no 'hydra-guest: powering off' on the console", log)
        if qemu.returncode != 0:
            fail(f"QEMU exit status {qemu.returncode}", log)
        print(f"check-guest: OK: QMP up {t_qmp - t0:.2f} s, booted marker {t_boot - t0:.2f} s, "
              f"powered off {t_exit - t_pd:.2f} s after system_powerdown")
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        if qemu.stderr:
            qemu.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
