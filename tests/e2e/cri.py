"""A CRI client for the e2e tests: RuntimeService/Version, a container run in a pod entirely server-side
(run_in_pod), and the kubelet's calls for a pod whose container runs to its end (kubelet_pod), over grpcio, with the message definitions of cri_version.proto compiled by protoc at first use
(no generated code is kept in the tree)."""
import importlib.util
import os
import subprocess
import tempfile
import time
import uuid

import grpc

HERE = os.path.dirname(os.path.abspath(__file__))
_messages = None


def messages():
    global _messages
    if _messages is None:
        with tempfile.TemporaryDirectory(prefix="hydra-e2e-cri.") as out:
            subprocess.run(["protoc", f"--proto_path={HERE}", f"--python_out={out}", "cri_version.proto"],
                           check=True)
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


def _rpc(channel, method, request, response_type, timeout):
    """One unary runtime.v1.RuntimeService call: its response."""
    call = channel.unary_unary(f"/runtime.v1.RuntimeService/{method}",
                               request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)
    return call(request, timeout=timeout)


def run_in_pod(socket_path, image, command, runtime_handler="", timeout=120):
    """Run `command` in a container of `image` in a new pod, all through the CRI socket (nothing is mounted here).

    RunPodSandbox (node network, so no CNI is needed; pid and ipc namespaces of the pod) with `runtime_handler`
    ("" = the runtime's default), CreateContainer and StartContainer of a long-running container
    (/bin/sleep 600, so `image` needs /bin/sleep), ExecSync(command), then StopContainer, RemoveContainer,
    StopPodSandbox and RemovePodSandbox whatever happened (their errors are ignored: an earlier error is the one
    raised). `image` must already be in the runtime's CRI image store (containerd: namespace k8s.io), as must
    its sandbox (pause) image. `timeout` (seconds) bounds each call and the command.
    Returns (exit_code, stdout bytes, stderr bytes, {'sandbox'|'create'|'start'|'exec': seconds})."""
    m = messages()
    name = f"hydra-e2e-{uuid.uuid4().hex[:12]}"
    uid = str(uuid.uuid4())
    ns = m.NamespaceOption(network=m.NODE, pid=m.POD, ipc=m.POD)  # node network: node UTS, so no hostname
    sandbox_config = m.PodSandboxConfig(
        metadata=m.PodSandboxMetadata(name=name, uid=uid, namespace="hydra-e2e", attempt=0),
        log_directory=f"/var/log/pods/hydra-e2e_{name}_{uid}",
        linux=m.LinuxPodSandboxConfig(security_context=m.LinuxSandboxSecurityContext(namespace_options=ns)))
    timings = {}
    sandbox_id = container_id = None
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        def timed(key, method, request, response_type, deadline=timeout):
            start = time.monotonic()
            response = _rpc(channel, method, request, response_type, deadline)
            timings[key] = time.monotonic() - start
            return response

        try:
            sandbox_id = timed("sandbox", "RunPodSandbox",
                               m.RunPodSandboxRequest(config=sandbox_config, runtime_handler=runtime_handler),
                               m.RunPodSandboxResponse).pod_sandbox_id
            container_config = m.ContainerConfig(metadata=m.ContainerMetadata(name="c", attempt=0),
                                                 image=m.ImageSpec(image=image),
                                                 command=["/bin/sleep", "600"], log_path="c.log")
            container_id = timed("create", "CreateContainer",
                                 m.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=container_config,
                                                          sandbox_config=sandbox_config),
                                 m.CreateContainerResponse).container_id
            timed("start", "StartContainer", m.StartContainerRequest(container_id=container_id),
                  m.StartContainerResponse)
            result = timed("exec", "ExecSync",
                           m.ExecSyncRequest(container_id=container_id, cmd=list(command), timeout=timeout),
                           m.ExecSyncResponse, deadline=timeout + 30)
            return result.exit_code, result.stdout, result.stderr, timings
        finally:
            cleanup = []
            if container_id:
                cleanup += [("StopContainer", m.StopContainerRequest(container_id=container_id, timeout=0),
                             m.StopContainerResponse),
                            ("RemoveContainer", m.RemoveContainerRequest(container_id=container_id),
                             m.RemoveContainerResponse)]
            if sandbox_id:
                cleanup += [("StopPodSandbox", m.StopPodSandboxRequest(pod_sandbox_id=sandbox_id),
                             m.StopPodSandboxResponse),
                            ("RemovePodSandbox", m.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                             m.RemovePodSandboxResponse)]
            for method, request, response_type in cleanup:
                try:
                    _rpc(channel, method, request, response_type, timeout)
                except grpc.RpcError:
                    pass


def kubelet_pod(socket_path, image, command, runtime_handler, make_log_dir, read_log, timeout=120, poll=0.2):
    """A pod of one container that runs `command` and exits, with exactly the calls the kubelet sends (through
    crismux) for it: RunPodSandbox with `runtime_handler`, CreateContainer, StartContainer, ContainerStatus until
    the container has exited, then StopPodSandbox and RemovePodSandbox (which removes the container).

    The pod is the kubelet's shape: node network (so no CNI; the container sees the node's host name), log
    directory /var/log/pods/NAMESPACE_NAME_UID and the container's log c/0.log in it. The kubelet makes those
    directories on its own file system before RunPodSandbox: make_log_dir(pod_log_dir, container_dir) does it.
    Once the container has exited, read_log(path) reads its log (the absolute path ContainerStatus gives) as the
    kubelet would; its result is returned.
    Returns {"exit_code", "reason", "log_path", "log", "calls": [(method, seconds), ...]} in call order; an
    error of a call is raised after the pod is stopped and removed."""
    m = messages()
    name = f"hydra-e2e-{uuid.uuid4().hex[:12]}"
    uid = str(uuid.uuid4())
    log_dir = f"/var/log/pods/hydra-e2e_{name}_{uid}"
    ns = m.NamespaceOption(network=m.NODE, pid=m.POD, ipc=m.POD)
    sandbox_config = m.PodSandboxConfig(
        metadata=m.PodSandboxMetadata(name=name, uid=uid, namespace="hydra-e2e", attempt=0),
        log_directory=log_dir,
        linux=m.LinuxPodSandboxConfig(security_context=m.LinuxSandboxSecurityContext(namespace_options=ns)))
    result = {"calls": []}
    make_log_dir(log_dir, f"{log_dir}/c")
    sandbox_id = None
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        def call(method, request, response_type):
            start = time.monotonic()
            try:
                return _rpc(channel, method, request, response_type, timeout)
            finally:
                result["calls"].append((method, time.monotonic() - start))

        try:
            sandbox_id = call("RunPodSandbox",
                              m.RunPodSandboxRequest(config=sandbox_config, runtime_handler=runtime_handler),
                              m.RunPodSandboxResponse).pod_sandbox_id
            container_config = m.ContainerConfig(metadata=m.ContainerMetadata(name="c", attempt=0),
                                                 image=m.ImageSpec(image=image), command=list(command),
                                                 log_path="c/0.log")
            container_id = call("CreateContainer",
                                m.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=container_config,
                                                         sandbox_config=sandbox_config),
                                m.CreateContainerResponse).container_id
            call("StartContainer", m.StartContainerRequest(container_id=container_id), m.StartContainerResponse)
            deadline = time.monotonic() + timeout
            while True:
                status = call("ContainerStatus", m.ContainerStatusRequest(container_id=container_id),
                              m.ContainerStatusResponse).status
                if status.state == m.CONTAINER_EXITED or time.monotonic() > deadline:
                    break
                time.sleep(poll)
            result.update(exit_code=status.exit_code if status.state == m.CONTAINER_EXITED else None,
                          reason=status.reason, log_path=status.log_path)
            result["log"] = read_log(status.log_path)
            return result
        finally:
            if sandbox_id:
                call("StopPodSandbox", m.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), m.StopPodSandboxResponse)
                call("RemovePodSandbox", m.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id),
                     m.RemovePodSandboxResponse)
