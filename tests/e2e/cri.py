"""A CRI client for the e2e tests: RuntimeService/Version over grpcio, with the message definitions of
cri_version.proto compiled by protoc at first use (no generated code is kept in the tree)."""
import importlib.util
import os
import subprocess
import tempfile

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
_messages = None


def messages():
    global _messages
    if _messages is None:
        out = tempfile.mkdtemp(prefix="hydra-e2e-cri.")
        subprocess.run(["protoc", f"--proto_path={HERE}", f"--python_out={out}", "cri_version.proto"], check=True)
        spec = importlib.util.spec_from_file_location("cri_version_pb2", os.path.join(out, "cri_version_pb2.py"))
        _messages = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_messages)
    return _messages


def runtime_version(socket_path, timeout=60):
    """runtime.v1.RuntimeService/Version through a unix socket (hydrad's CRI socket): the VersionResponse."""
    m = messages()
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        version = channel.unary_unary("/runtime.v1.RuntimeService/Version",
                                      request_serializer=m.VersionRequest.SerializeToString,
                                      response_deserializer=m.VersionResponse.FromString)
        return version(m.VersionRequest(version="v1"), timeout=timeout)
