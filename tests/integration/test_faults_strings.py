#!/usr/bin/python3
"""Strings protobuf-c takes but must not (issue 9), and the other limits of a spec, against a real hydrad (no QEMU).

 1. RegisterVm with invalid UTF-8 or a NUL byte in a string field (hand-made wire bytes: the Python library will
    not serialize them): INVALID_ARGUMENT naming the field; nothing is stored, GetVm/ListVms still decode in
    grpcio. Also Health.Check's service, and request bytes that are no message: the RPC's name, no C type name.
 2. A 512-byte guest password: INVALID_ARGUMENT naming the limit (511 bytes is taken and hashed).
 3. A stored spec.pb holding invalid UTF-8 or a NUL: reported at load naming the file and the field, not served;
    the other VM is served; ListVms decodes.
 4. A stored spec.pb that is group- or world-writable, or owned by another user: refused with the reason.

Prints "N passed, N failed"."""
import os
import subprocess
import sys

sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpc  # noqa: E402
from hydra.v1 import hydra_pb2 as pb  # noqa: E402

from hydra_client import Checks, Daemon, guest_spec, health_pb2, rpc_error  # noqa: E402

HYDRAD = os.environ["HYDRAD"]
GUEST = os.environ["HYDRA_GUEST_DIR"]
HOST, ISO = pb.ROLE_HOST, pb.ROLE_ISOLATED
INVALID = grpc.StatusCode.INVALID_ARGUMENT

check = Checks()


def raw(channel, method):
    """A unary call that sends bytes as they are and decodes the reply with nothing: the test decodes it."""
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def poked(message, marker, replacement):
    """message serialized, with marker (bytes, same length as replacement) replaced in the wire bytes."""
    data = message.SerializeToString()
    assert len(marker) == len(replacement) and data.count(marker) == 1, marker
    return data.replace(marker, replacement)


def decodes(d):
    """GetVm of both roles and ListVms decode in grpcio (which checks UTF-8); returns the registered roles."""
    roles = [v.role for v in d.api.ListVms(pb.ListVmsRequest(), timeout=10).vms]
    for r in roles:
        d.api.GetVm(pb.GetVmRequest(role=r), timeout=10)
    return roles


def spec_with_markers():
    spec = guest_spec(GUEST, cmdline="console=ttyS0 panic=-1 CMDX")
    spec.guest.hostname = "HOSTX"
    spec.guest.ssh_authorized_keys.extend(["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY0 a@b",
                                           "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKEY1 c@d"])
    return spec


def main():
    d = Daemon(HYDRAD, prefix="hydra-strings.")
    try:
        h = d.start()
        h.RegisterVm(pb.RegisterVmRequest(role=ISO, spec=guest_spec(GUEST)), timeout=10)
        register = raw(d.channel, "/hydra.v1.Hydra/RegisterVm")
        req = pb.RegisterVmRequest(role=HOST, spec=spec_with_markers())

        # ---------------------------------------------------------------- 1. strings in requests
        cases = (
            ("kernel.cmdline: invalid UTF-8 (0xff)", b"CMDX", b"CM\xffX", "spec.kernel.cmdline: is not valid UTF-8"),
            ("kernel.cmdline: an overlong '/'", b"CMDX", b"C\xc0\xafX", "spec.kernel.cmdline: is not valid UTF-8"),
            ("kernel.cmdline: a surrogate", b"CMDX", b"\xed\xa0\x80X", "spec.kernel.cmdline: is not valid UTF-8"),
            ("kernel.cmdline: a NUL byte", b"CMDX", b"CM\0X", "spec.kernel.cmdline: holds a NUL byte"),
            ("guest.hostname: a NUL byte (a\\0b would become a)", b"HOSTX", b"HO\0ST", "spec.guest.hostname: holds a NUL"),
            ("guest.hostname: invalid UTF-8", b"HOSTX", b"HOS\xe9X", "spec.guest.hostname: is not valid UTF-8"),
            ("the second SSH key: a NUL byte", b"KEY1", b"K\0Y1", "spec.guest.ssh_authorized_keys[1]: holds a NUL"),
        )
        for label, marker, bad, expect in cases:
            e = rpc_error(register, poked(req, marker, bad), timeout=10)
            check(f"RegisterVm with {label}: INVALID_ARGUMENT naming the field",
                  e is not None and e.code() == INVALID and e.details().startswith(expect))
            if e is not None and not e.details().startswith(expect):
                print(f"#   {e.code()}: {e.details()}")
        try:
            roles = decodes(d)
            check("after them, GetVm/ListVms decode in grpcio and host is not registered", roles == [ISO])
        except Exception as ex:  # noqa: BLE001 (a DecodeError inside grpcio: what the check is for)
            check(f"after them, GetVm/ListVms decode in grpcio ({type(ex).__name__}: {ex})", False)

        pw = pb.RegisterVmRequest(role=HOST, spec=guest_spec(GUEST))
        pw.spec.guest.password = "PWXsecret"
        e = rpc_error(register, poked(pw, b"PWX", b"P\0X"), timeout=10)
        check("a NUL byte in guest.password: INVALID_ARGUMENT naming the field, not showing the value",
              e is not None and e.code() == INVALID and e.details().startswith("spec.guest.password: holds a NUL")
              and "secret" not in e.details())

        health = raw(d.channel, "/grpc.health.v1.Health/Check")
        e = rpc_error(health, poked(health_pb2.HealthCheckRequest(service="hydra.v1.HydraX"), b"X", b"\xff"),
                      timeout=10)
        check("Health.Check with a service name that is not UTF-8: INVALID_ARGUMENT naming 'service'",
              e is not None and e.code() == INVALID and e.details().startswith("service: is not valid UTF-8"))

        e = rpc_error(raw(d.channel, "/hydra.v1.Hydra/GetVm"), b"\x0a\x05ab", timeout=10)
        check("request bytes that are no message: INVALID_ARGUMENT naming the RPC, no C type name",
              e is not None and e.code() == INVALID and "GetVm" in e.details() and "__" not in e.details())
        if e is not None:
            print(f"#   {e.details()}")

        # ---------------------------------------------------------------- 2. the password limit
        for n, ok in ((512, False), (2000, False), (511, True)):
            spec = guest_spec(GUEST)
            spec.guest.password = "p" * n
            e = rpc_error(h.RegisterVm, pb.RegisterVmRequest(role=HOST, spec=spec), timeout=30)
            if ok:
                vm = h.GetVm(pb.GetVmRequest(role=HOST), timeout=10) if e is None else None
                check(f"a {n}-byte guest password is taken and stored hashed",
                      vm is not None and vm.spec.guest.password_hash.startswith("$y$"))
            else:
                check(f"a {n}-byte guest password: INVALID_ARGUMENT naming the limit",
                      e is not None and e.code() == INVALID
                      and "guest.password: the password is longer than 511 bytes" in e.details())
                if e is not None and e.code() != INVALID:
                    print(f"#   {e.code()}: {e.details()}")

        # README's example of an RPC error (exit 1): cpus = 0 can no longer be it (hydractl refuses 0, exit 2).
        if os.environ.get("HYDRACTL"):
            p = subprocess.run([os.environ["HYDRACTL"], "--socket", d.sock, "register", "host", "--spec", "-"],
                               input=f"[vm]\nmemory = 32M\n[kernel]\npath = {GUEST}/vmlinuz\n", capture_output=True,
                               text=True, timeout=60)
            check("README's exit-1 example is what hydractl prints", p.returncode == 1 and p.stderr.strip()
                  == "hydractl: INVALID_ARGUMENT: memory_mib: 32 is below the minimum (allowed: at least 64 MiB)")

        # ---------------------------------------------------------------- 3. a bad string in a stored spec
        h.RegisterVm(pb.RegisterVmRequest(role=HOST, spec=spec_with_markers()), timeout=10)
        check("hydrad exits 0 on SIGTERM (before the stored-spec cases)", d.stop() == 0)
        spec_path = f"{d.state}/host/spec.pb"
        orig = open(spec_path, "rb").read()

        def start_with(label, content=None, mode=None, owner=None):
            if content is not None:
                with open(spec_path, "wb") as f:
                    f.write(content)
            if mode is not None:
                os.chmod(spec_path, mode)
            if owner is not None:
                os.chown(spec_path, owner, -1)
            mark = os.path.getsize(d.log_path)
            d.start()
            log = open(d.log_path, errors="replace").read()[mark:]
            named = [ln for ln in log.splitlines() if spec_path in ln and "cannot load" in ln]
            try:
                roles = decodes(d)
            except Exception as ex:  # noqa: BLE001
                roles = f"{type(ex).__name__}: {ex}"
            iso = d.api.GetVm(pb.GetVmRequest(role=ISO), timeout=10)
            e = rpc_error(d.api.GetVm, pb.GetVmRequest(role=HOST), timeout=10)
            check(f"stored spec {label}: not served (host NOT_FOUND), isolated served, ListVms decodes",
                  e is not None and e.code() == grpc.StatusCode.NOT_FOUND and roles == [ISO]
                  and iso.spec.memory_mib == 256)
            if roles != [ISO]:
                print(f"#   ListVms/GetVm: {roles}")
            check(f"hydrad exits 0 (stored spec {label})", d.stop() == 0)
            for ln in named[:1]:
                print(f"#   log: {ln.strip()}")
            return named[0] if named else log[-1500:]

        for label, marker, bad, expect in (
                ("with invalid UTF-8 in kernel.cmdline", b"CMDX", b"CM\xffX", "kernel.cmdline: is not valid UTF-8"),
                ("with invalid UTF-8 in guest.hostname", b"HOSTX", b"HOS\xffX", "guest.hostname: is not valid UTF-8"),
                ("with a NUL in guest.hostname", b"HOSTX", b"HO\0ST", "guest.hostname: holds a NUL byte")):
            assert orig.count(marker) == 1
            line = start_with(label, orig.replace(marker, bad))
            check(f"stored spec {label}: the log names the file and the field", expect in line)

        # ---------------------------------------------------------------- 4. who may have written spec.pb
        for label, mode, owner, expect in (
                ("mode 0666", 0o666, None, "is world-writable (mode 0666): refusing to trust it"),
                ("mode 0620", 0o620, None, "is group-writable (mode 0620): refusing to trust it"),
                ("owned by uid 65534", 0o600, 65534, "is owned by uid 65534, not by hydrad's user")):
            if owner is not None and os.geteuid() != 0:
                print(f"# skipped: spec.pb {label} (chown needs root)")
                continue
            line = start_with(label, orig, mode, owner)
            check(f"spec.pb {label}: refused, the log saying why", expect in line)
            if owner is not None:
                os.chown(spec_path, os.geteuid(), -1)

        os.chmod(spec_path, 0o600)
        h = d.start()
        vm = h.GetVm(pb.GetVmRequest(role=HOST), timeout=10)
        check("restored (mode 0600, ours): the spec loads again", vm.spec.guest.hostname == "HOSTX")
        check("hydrad exits 0 on SIGTERM", d.stop() == 0)
    finally:
        if check.failed:
            print("--- the end of hydrad's log ---\n" + d.log()[-6000:])
        d.cleanup()
    return check.finish()


if __name__ == "__main__":
    sys.exit(main())
