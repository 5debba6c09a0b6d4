#!/usr/bin/python3
"""packaging/charts: each chart rendered with helm_render.py (Debian 12 has no helm) with its default values and
with overrides, every object checked against the Kubernetes structure (helm_render.validate), then what each chart
is for: hydrad's DaemonSet and its host paths, the isolated VM's variables (each one hydractl --from-env reads; with
$HYDRACTL, the rendered environment gives the spec it should), the installer shipped byte for byte and run with
the right verb, the nelly RuntimeClass. Broken copies of the charts (an unsupported construct, a mount naming no
volume, an unquoted number, ...) must be reported, not rendered.
Prints ok/not ok lines and "N passed, N failed"; exits 1 on a failure."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import helm_render  # noqa: E402
import yaml  # noqa: E402

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHARTS = os.path.join(SRC, "packaging", "charts")
HYDRACTL = os.environ.get("HYDRACTL")
PASSED = FAILED = 0


def check(desc, cond, detail=""):
    global PASSED, FAILED
    if cond:
        PASSED += 1
        print("ok - %s" % desc)
    else:
        FAILED += 1
        print("not ok - %s%s" % (desc, (": %s" % detail) if detail else ""))
    return cond


def render(chart_dir, values=None, tmp=None):
    """Renders and validates; returns (objects, problems) or (None, [error])."""
    files = []
    if values is not None:
        path = os.path.join(tmp, "values-%d.yaml" % len(os.listdir(tmp)))
        with open(path, "w") as f:
            yaml.safe_dump(values, f)
        files.append(path)
    try:
        manifest, notes = helm_render.render(chart_dir, files, release="hydra", namespace="hydra")
    except helm_render.RenderError as e:
        return None, [str(e)]
    objects, problems = helm_render.validate(manifest)
    return objects, problems


def find(objects, kind, name=None):
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def pod(objects):
    return find(objects, "DaemonSet")[0]["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def host_paths(spec):
    return {v["hostPath"]["path"]: v["name"] for v in spec.get("volumes") or [] if "hostPath" in v}


def mount_of(container, volume):
    return [m for m in container.get("volumeMounts") or [] if m["name"] == volume]


def rendered(desc, chart, values, tmp):
    objects, problems = render(os.path.join(CHARTS, chart), values, tmp)
    check("%s: renders and validates (%d objects)" % (desc, len(objects or [])), objects and not problems,
          "; ".join(problems))
    return objects or []


def test_every_chart(tmp):
    charts = sorted(d for d in os.listdir(CHARTS) if os.path.isfile(os.path.join(CHARTS, d, "Chart.yaml")))
    check("the four charts are there", charts == ["add-crismux", "hydra", "isolated-vm", "remove-crismux"],
          charts)
    for c in charts:
        chart = yaml.safe_load(open(os.path.join(CHARTS, c, "Chart.yaml")))
        check("%s: Chart.yaml apiVersion v2, name, version, appVersion" % c,
              chart.get("apiVersion") == "v2" and chart.get("name") == c and chart.get("version")
              and chart.get("appVersion"))
        # Every value a template reads is in values.yaml (set, or commented out with its documentation).
        values_text = open(os.path.join(CHARTS, c, "values.yaml")).read()
        values = yaml.safe_load(values_text)
        missing = []
        for t in os.listdir(os.path.join(CHARTS, c, "templates")):
            text = open(os.path.join(CHARTS, c, "templates", t)).read()
            for path in sorted(set(re.findall(r"\.Values((?:\.[A-Za-z0-9_]+)+)", text))):
                v, keys = values, path[1:].split(".")
                for k in keys:
                    v = v.get(k, KeyError) if isinstance(v, dict) else KeyError
                if v is KeyError and not re.search(r"(?m)^\s*#\s*%s:" % re.escape(keys[-1]), values_text):
                    missing.append(path)
        check("%s: every .Values path of the templates is in values.yaml" % c, not missing, missing)
        _, notes = helm_render.render(os.path.join(CHARTS, c))
        check("%s: NOTES.txt renders" % c, notes.strip() != "")


def test_hydra(tmp):
    objects = rendered("hydra, default values", "hydra", None, tmp)
    if not objects:
        return
    spec = pod(objects)
    c = spec["containers"][0]
    paths = host_paths(spec)
    want = ["/var/lib/kubelet", "/var/log/pods", "/var/lib/hydra", "/run/hydra", "/dev/kvm"]
    check("hydra: hostPath volumes for the kubelet dir, pod logs, state dir, run dir and /dev/kvm",
          all(p in paths for p in want), paths)
    check("hydra: each mounted at the node's path", all(
        mount_of(c, paths[p]) and mount_of(c, paths[p])[0]["mountPath"] == p for p in want if p in paths))
    check("hydra: the kubelet dir sees the node's later mounts (HostToContainer)",
          mount_of(c, paths.get("/var/lib/kubelet"))[0].get("mountPropagation") == "HostToContainer")
    check("hydra: privileged, the node's network", c["securityContext"]["privileged"] is True
          and spec["hostNetwork"] is True)
    env = env_of(c)
    check("hydra: hydrad alone (HYDRA_ROLE none), its state and run dirs from the values",
          env.get("HYDRA_ROLE") == "none" and env.get("HYDRA_STATE_DIR") == "/var/lib/hydra"
          and env.get("HYDRA_RUN_DIR") == "/run/hydra", env)
    check("hydra: no ConfigMap without specs", not find(objects, "ConfigMap"))

    ini = open(os.path.join(SRC, "packaging", "isolated.ini")).read()
    objects = rendered("hydra, specs + node paths overridden", "hydra", {
        "specs": {"isolated": ini}, "privileged": False, "stateDir": "/srv/hydra", "runDir": "/run/hydra2",
        "image": {"repository": "registry.example/hydra", "tag": "1.2"},
        "nodeSelector": {"hydra.example/kvm": "yes"},
        "tolerations": [{"key": "edge", "operator": "Exists", "effect": "NoSchedule"}]}, tmp)
    if not objects:
        return
    spec = pod(objects)
    c = spec["containers"][0]
    env = env_of(c)
    cms = find(objects, "ConfigMap")
    check("hydra: specs become a ConfigMap of ROLE.ini files, mounted at HYDRA_SPEC_DIR",
          len(cms) == 1 and cms[0]["data"] == {"isolated.ini": ini} and env.get("HYDRA_SPEC_DIR") == "/etc/hydra/specs"
          and mount_of(c, "specs") and mount_of(c, "specs")[0]["mountPath"] == "/etc/hydra/specs"
          and "HYDRA_ROLE" not in env, env)
    check("hydra: overrides reach the pod (image, state dir, privileged, nodeSelector, tolerations)",
          c["image"] == "registry.example/hydra:1.2" and "/srv/hydra" in host_paths(spec)
          and env.get("HYDRA_STATE_DIR") == "/srv/hydra" and c["securityContext"]["privileged"] is False
          and spec["nodeSelector"] == {"hydra.example/kvm": "yes"} and spec["tolerations"][0]["key"] == "edge")
    if HYDRACTL:
        path = os.path.join(tmp, "isolated.ini")
        with open(path, "w") as f:
            f.write(cms[0]["data"]["isolated.ini"])
        r = subprocess.run([HYDRACTL, "spec-dump", "--spec", path], capture_output=True, text=True)
        check("hydra: hydractl reads the spec file the ConfigMap carries", r.returncode == 0, r.stderr.strip())


def fromenv_names():
    """The variables hydractl --from-env reads (client/fromenv.c) and the entrypoint's own."""
    text = open(os.path.join(SRC, "client", "fromenv.c")).read()
    names = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', text))
    entry = open(os.path.join(SRC, "packaging", "container", "hydra-entrypoint")).read()
    names |= set(re.findall(r"\b(HYDRA_[A-Z_]+)", entry))
    return names


def test_isolated_vm(tmp):
    objects = rendered("isolated-vm, default values", "isolated-vm", None, tmp)
    if not objects:
        return
    spec = pod(objects)
    c = spec["containers"][0]
    env = env_of(c)
    paths = host_paths(spec)
    check("isolated-vm: the role from the environment, isolated", env.get("HYDRA_ROLE") == "isolated", env)
    check("isolated-vm: the image dir, kubelet dir, pod logs, run dir and /dev/kvm from the node",
          all(p in paths for p in ["/srv/shared-container-volumes/image", "/var/lib/kubelet", "/var/log/pods",
                                   "/run/hydra", "/dev/kvm"]), paths)
    check("isolated-vm: the image dir is hydrad's state dir (/var/lib/hydra)",
          mount_of(c, paths["/srv/shared-container-volumes/image"])[0]["mountPath"] == "/var/lib/hydra")
    check("isolated-vm: no Secret without credentials", not find(objects, "Secret"))

    # Every documented value set at once: each variable is one hydractl reads.
    values = yaml.safe_load(open(os.path.join(CHARTS, "isolated-vm", "values.yaml")).read())
    keys = re.findall(r"(?m)^  #([a-z0-9_]+):", open(os.path.join(CHARTS, "isolated-vm", "values.yaml")).read())
    conf = {k: "x" for k in keys}
    conf.update(kvm_cpu=3, kvm_memory=2, vm_hostname="node-isolated", default_kvm_ports_redirect="30800:8000",
                sshkey="ssh-ed25519 AAAAC3Nza test@hydra", rimd_atifact_url_user="dXNlcg==",
                rimd_atifact_url_pass="cGFzcw==", rimd_artifact_url_token="dG9rZW4=", vm_password="hail hydra",
                local_node_image_dir="")
    objects = rendered("isolated-vm, every variable set (numbers unquoted)", "isolated-vm",
                       {"configuration": conf, "preset": "isolated",
                        "extraEnv": [{"name": "HYDRA_RESTART", "value": "on-failure"}]}, tmp)
    if not objects:
        return
    c = pod(objects)["containers"][0]
    env = env_of(c)
    known = fromenv_names()
    unknown = sorted(n for n in env if n not in known)
    check("isolated-vm: %d variables, each one hydractl --from-env or the entrypoint reads" % len(env),
          len(env) >= len(keys) and not unknown, unknown)
    check("isolated-vm: numbers are passed as strings", env.get("KVM_CPU") == "3" and env.get("KVM_MEMORY") == "2")
    secret = find(objects, "Secret")
    check("isolated-vm: the password and the RIMD credentials come from a Secret, not the pod spec",
          len(secret) == 1 and all(isinstance(env[n], dict) and "secretKeyRef" in env[n] for n in
                                   ("VM_PASSWORD", "RIMD_ARTIFACT_URL_USER", "RIMD_ARTIFACT_URL_PASS",
                                    "RIMD_ARTIFACT_URL_TOKEN")) and "hail hydra" not in str(c), env)
    check("isolated-vm: local_node_image_dir empty: no image volume (the container's own)",
          "image" not in {v["name"] for v in pod(objects)["volumes"]})

    if HYDRACTL:
        # The chart's environment makes the spec it says: plain values only (the Secret's are not real).
        conf = dict(kvm_cpu=3, kvm_memory=2, vm_hostname="node-isolated", default_kvm_ports_redirect="30800:8000",
                    sshkey="ssh-ed25519 AAAAC3Nza test@hydra", copy_image_backup=1)
        objects = rendered("isolated-vm, a realistic configuration", "isolated-vm", {"configuration": conf}, tmp)
        if not objects:
            return
        env = {k: v for k, v in env_of(pod(objects)["containers"][0]).items() if isinstance(v, str)}
        r = subprocess.run([HYDRACTL, "spec-dump", "--from-env"], capture_output=True, text=True,
                           env=dict(env, PATH=os.environ.get("PATH", "/usr/bin:/bin"), HOME=tmp, USER="root"))
        ok = r.returncode == 0
        if ok:
            spec = yaml.safe_load(r.stdout)
            fwd = [(f["host_port"], f["guest_port"]) for f in spec.get("forwards") or []]
            ok = (spec["cpus"] == 3 and spec["memory_mib"] == 2048 and spec["guest"]["hostname"] == "node-isolated"
                  and (30800, 8000) in fwd and spec["keep_pristine"] is True)
        check("isolated-vm: the rendered environment gives hydractl --from-env the spec the values say", ok,
              r.stderr.strip() or r.stdout[:300])


def test_crismux(tmp):
    script = open(os.path.join(SRC, "packaging", "install_crismux.sh")).read()
    for chart, verb in (("add-crismux", "install"), ("remove-crismux", "remove")):
        objects = rendered("%s, default values" % chart, chart, None, tmp)
        if not objects:
            continue
        spec = pod(objects)
        c = spec["containers"][0]
        cm = find(objects, "ConfigMap")
        check("%s: ships packaging/install_crismux.sh byte for byte in a ConfigMap" % chart,
              len(cm) == 1 and cm[0]["data"].get("install_crismux.sh") == script)
        vol = [v for v in spec["volumes"] if "configMap" in v]
        check("%s: the pod mounts that ConfigMap" % chart, vol and vol[0]["configMap"]["name"] ==
              cm[0]["metadata"]["name"] and mount_of(c, vol[0]["name"]))
        cmd = " ".join(c.get("command", []) + c.get("args", []))
        check("%s: runs 'install_crismux.sh %s' in the node's namespaces (nsenter, hostPID, privileged)"
              % (chart, verb), re.search(r"nsenter --target 1 --mount .*install_crismux\.sh\" %s\n" % verb, cmd,
                                         re.S) and spec.get("hostPID") is True
              and c["securityContext"]["privileged"] is True, cmd)
        rc = find(objects, "RuntimeClass")
        if chart == "add-crismux":
            check("add-crismux: RuntimeClass nelly, handler nelly", len(rc) == 1 and rc[0]["metadata"]["name"] ==
                  "nelly" and rc[0]["handler"] == "nelly", rc)
        else:
            check("remove-crismux: no RuntimeClass (add-crismux's goes with its uninstall)", not rc)

    objects = rendered("add-crismux, the installer's variables set", "add-crismux", {
        "nellyEndpoint": "unix:/run/hydra/isolated/containerd.sock", "crismuxVersion": "v1.2.2",
        "crismuxSha256": "0" * 64, "runtimeClass": {"create": False}}, tmp)
    if objects:
        env = env_of(pod(objects)["containers"][0])
        check("add-crismux: NELLY_ENDPOINT, CRISMUX_VERSION, CRISMUX_SHA256 reach the installer",
              env == {"NELLY_ENDPOINT": "unix:/run/hydra/isolated/containerd.sock", "CRISMUX_VERSION": "v1.2.2",
                      "CRISMUX_SHA256": "0" * 64}, env)
        check("add-crismux: runtimeClass.create false: no RuntimeClass", not find(objects, "RuntimeClass"))
        installer = open(os.path.join(SRC, "packaging", "install_crismux.sh")).read()
        check("add-crismux: each variable is one the installer reads",
              all(re.search(r"\b%s\b" % n, installer) for n in env), env)


def broken(tmp, desc, chart, edit, pattern, values=None):
    """A copy of the chart with edit(text of templates/daemonset.yaml) -> new text must fail with pattern."""
    d = os.path.join(tmp, "broken-%d" % len(os.listdir(tmp)), chart)
    shutil.copytree(os.path.join(CHARTS, chart), d, symlinks=False)
    if edit:
        path = os.path.join(d, "templates", edit[0])
        text = open(path).read() if os.path.exists(path) else ""
        new = edit[1](text)
        assert new != text, desc
        with open(path, "w") as f:
            f.write(new)
    objects, problems = render(d, values, tmp)
    msg = "; ".join(problems)
    check("broken: %s: reported (%s)" % (desc, msg[:160]), problems and re.search(pattern, msg), msg or "passed")


def test_broken(tmp):
    ds = "daemonset.yaml"
    broken(tmp, "{{ range }}", "hydra", (ds, lambda t: t.replace(
        "      containers:", "      {{- range .Values.tolerations }}\n      {{- end }}\n      containers:")),
        r"hydra/templates/daemonset.yaml:\d+: 'range' is not supported")
    broken(tmp, "an unknown function", "hydra", (ds, lambda t: t.replace(
        "{{ .Values.image.pullPolicy }}", "{{ .Values.image.pullPolicy | upper }}")), r"unknown function 'upper'")
    broken(tmp, "include of a helper", "add-crismux", (ds, lambda t: t.replace(
        "name: {{ .Release.Name }}-{{ .Chart.Name }}\n  labels", 'name: {{ include "x.fullname" . }}\n  labels')),
        r"'include' is not supported")
    broken(tmp, "a value under a missing map", "hydra", (ds, lambda t: t.replace(
        "{{ .Values.logLevel | quote }}", "{{ .Values.log.level | quote }}")), r"nil pointer evaluating \.Values\.log\.level")
    broken(tmp, "a missing value printed", "hydra", (ds, lambda t: t.replace(
        "{{ .Values.logLevel | quote }}", "{{ .Values.loglevel }}")), r"not set \(helm would print '<no value>'\)")
    broken(tmp, "an unterminated if", "hydra", (ds, lambda t: t.replace("      {{- end }}\n      containers:",
                                                                         "      containers:", 1)),
        r"'if' without 'end'")
    broken(tmp, "a volumeMount naming no volume", "hydra", (ds, lambda t: t.replace(
        "            - name: pod-logs\n              mountPath", "            - name: pod-log\n              mountPath")),
        r"volumeMounts\[\d\]: names no volume of the pod: 'pod-log'")
    broken(tmp, "a relative hostPath", "hydra", None, r"hostPath\.path: 'var/lib/hydra' is not absolute",
           {"stateDir": "var/lib/hydra"})
    broken(tmp, "an env value that is a number", "isolated-vm", (ds, lambda t: t.replace(
        "{{ .Values.configuration.kvm_cpu | quote }}", "{{ .Values.configuration.kvm_cpu }}")),
        r"env\[\d+\]\.value: 4 is not a string", {"configuration": {"kvm_cpu": 4}})
    broken(tmp, "selector not matching the pod labels", "add-crismux", (ds, lambda t: t.replace(
        "      app.kubernetes.io/instance: {{ .Release.Name }}\n  template",
        "      app.kubernetes.io/instance: other\n  template")), r"matchLabels: app.kubernetes.io/instance=other is not a label")
    broken(tmp, "a misspelt field", "remove-crismux", (ds, lambda t: t.replace("volumeMounts:", "volumeMount:")),
           r"unknown field 'volumeMount'")
    broken(tmp, "a RuntimeClass with a bad handler", "add-crismux", ("runtimeclass.yaml", lambda t: t.replace(
        "handler: nelly", "handler: Nelly_VM")), r"handler: 'Nelly_VM' is not a DNS label")
    broken(tmp, "a Job restarting Always", "add-crismux", ("job.yaml", lambda t: (
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: j\nspec:\n  template:\n    spec:\n"
        "      restartPolicy: Always\n      containers:\n        - name: c\n          image: busybox\n")),
        r"restartPolicy: 'Always' \(a Job needs Never or OnFailure\)")
    broken(tmp, "an unknown kind", "add-crismux", ("pdb.yaml", lambda t: (
        "apiVersion: policy/v1beta1\nkind: PodSecurityPolicy\nmetadata:\n  name: p\n")), r"unknown apiVersion/kind")
    broken(tmp, "a Secret reference to no Secret", "isolated-vm", ("secret.yaml", lambda t: t.replace(
        "name: {{ .Release.Name }}-{{ .Chart.Name }}-credentials", "name: other-credentials")),
        r"no Secret 'hydra-isolated-vm-credentials' with key 'password'", {"configuration": {"vm_password": "x"}})
    broken(tmp, ".Files.Get of a missing file", "add-crismux", ("configmap.yaml", lambda t: t.replace(
        "files/install_crismux.sh", "files/nosuch.sh")), r"\.Files\.Get: no file 'files/nosuch\.sh'")


def test_renderer(tmp):
    """The renderer against helm's documented behaviour on a small chart."""
    d = os.path.join(tmp, "mini")
    os.makedirs(os.path.join(d, "templates"))
    with open(os.path.join(d, "Chart.yaml"), "w") as f:
        f.write("apiVersion: v2\nname: mini\nversion: 1.0.0\nappVersion: \"2\"\n")
    with open(os.path.join(d, "values.yaml"), "w") as f:
        f.write("a:\n  b: hello\n  n: 8080\nlist: [1, 2]\nmap: {z: 1, y: two}\nempty: \"\"\nflag: false\n")
    with open(os.path.join(d, "templates", "cm.yaml"), "w") as f:
        f.write("x: {{ .Values.a.b }}\n"
                "{{- if .Values.empty }}\nno: 1\n{{- else if not .Values.flag }}\nelse-if: {{ .Values.a.n }}\n"
                "{{- end }}\n"
                "q: {{ .Values.a.b | quote }}  {{- /* a comment */}}\n"
                "m:{{ toYaml .Values.map | nindent 2 }}\n"
                "l: {{ .Values.missing | default \"dflt\" }} {{ or .Values.empty .Values.a.b }}\n"
                "r: {{ .Release.Name }}/{{ .Release.Namespace }}/{{ .Chart.Name }}-{{ .Chart.AppVersion }}\n")
    manifest, _ = helm_render.render(d, release="rel", namespace="ns")
    want = ("---\n# Source: mini/templates/cm.yaml\nx: hello\nelse-if: 8080\nq: \"hello\"\n"
            "m:\n  y: two\n  z: 1\nl: dflt hello\nr: rel/ns/mini-2\n")
    check("renderer: trimming, if/else if/not, quote, comments, toYaml|nindent, default, or, .Release, .Chart",
          manifest == want, repr(manifest))


def main():
    tmp = tempfile.mkdtemp(prefix="hydra-charts.")
    try:
        for t in (test_renderer, test_every_chart, test_hydra, test_isolated_vm, test_crismux, test_broken):
            t(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
